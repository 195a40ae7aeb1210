"""benchmarks/evidence.py end to end on its --quick profile: the adaptive grid, the
run file, the report and --resume, on Fashion-MNIST and on nuclei detection; and the
detection task's ground truth and COCO scores."""

import json
import subprocess

import numpy as np
import pytest
import torch

from mmslora_testing import load_tool

MSLORA_D32 = 86_208  # MSLoRA D 32, G 8 on EfficientNet-Lite0's 16 blocks


@pytest.fixture(scope='module')
def evidence():
    return load_tool('benchmarks/evidence.py')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """The decoded data, shared by the tests of this module."""
    return str(tmp_path_factory.mktemp('evidence_cache'))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quick_grid_fashion_and_resume(evidence, tmp_path, cache):
    args = [
        '--quick',
        '--tasks',
        'fashion',
        '--rows',
        'linear_probe',
        'mslora',
        '--lrs',
        '1e-2',
        '--max-extend',
        '1',
        '--out',
        str(tmp_path),
        '--name',
        'q',
        '--cache-dir',
        cache,
    ]
    out = evidence.main(args)
    records = _lines(tmp_path / 'q.jsonl')
    # probe: 1 run; MSLoRA: 1e-2, then one lr out (an edge either way); then seed 1 of both
    assert [(r['row'], r['seed'], r['phase']) for r in records] == [
        ('linear_probe', 0, 'select'),
        ('mslora', 0, 'select'),
        ('mslora', 0, 'extend'),
        ('linear_probe', 1, 'test'),
        ('mslora', 1, 'test'),
    ]
    assert records[2]['lr'] in (3e-3, 3e-2)
    rows = out['summary']['tasks']['fashion']['rows']
    mslora, probe = rows['mslora'], rows['linear_probe']
    best = max(sorted(mslora['scores']), key=lambda lr: mslora['scores'][lr])
    assert mslora['lr'] == best and mslora['complete'] and mslora['seeds'] == [0, 1]
    assert mslora['edge'] is (best != 1e-2)  # max_extend 1: no second extension
    assert probe['lr'] is None and probe['params']['backbone_trainable'] == 0
    assert probe['params']['trainable'] == 1280 * 10 + 10
    assert mslora['params']['backbone_trainable'] == MSLORA_D32
    assert mslora['ref_minus'] is None and probe['ref_minus']['n'] == 2
    md = (tmp_path / 'q.md').read_text()
    assert 'Runs done: 5; complete.' in md and '| Linear probe | **-: ' in md
    assert (tmp_path / 'q_curves.png').stat().st_size > 1000
    # a sitting cut short: the last run is lost; --resume runs exactly that one again
    (tmp_path / 'q.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records[:-1]))
    evidence.main(args + ['--resume'])
    again = _lines(tmp_path / 'q.jsonl')
    assert [r['key'] for r in again] == [r['key'] for r in records]
    meta = json.loads((tmp_path / 'q.json').read_text())
    assert len(meta['commands']) == 2 and meta['commands'][1].endswith('--resume')
    with pytest.raises(SystemExit, match='give the same settings'):
        evidence.main(args + ['--resume', '--steps', '7'])
    # a longer schedule starts MSLoRA's grid around the lr chosen in q.jsonl
    warm = args[:6] + ['--lrs-from', 'q', '--seeds', '0', '--max-extend', '0'] + args[10:]
    warm[-3] = 'w'  # --name w
    with pytest.raises(SystemExit, match='not both'):
        evidence.main(warm + ['--lrs', '1e-2'])
    with pytest.raises(SystemExit, match='no run file'):
        evidence.main([a if a != 'q' else 'missing' for a in warm])
    evidence.main(warm)
    tried = sorted(r['lr'] for r in _lines(tmp_path / 'w.jsonl') if r['row'] == 'mslora')
    ladder = evidence.grid.LADDER
    assert tried == list(ladder[ladder.index(best) - 1 : ladder.index(best) + 2])
    assert "chosen in `q` and its two neighbours" in (tmp_path / 'w.md').read_text()
    resumed = evidence.main([a for a in warm if a not in ('--lrs-from', 'q')] + ['--resume'])
    assert resumed['summary']['tasks']['fashion']['rows']['mslora']['lr'] in tried
    assert json.loads((tmp_path / 'w.json').read_text())['plan']['starts'] == {
        'fashion/mslora': tried
    }
    # resuming w from a run file that chose another lr would mix two protocols: refused
    other = dict(task='fashion', row='mslora', lr=1e-1, seed=0, val=50.0, diverged=False)
    (tmp_path / 'z.jsonl').write_text(json.dumps(dict(other, key='k')) + '\n')
    with pytest.raises(SystemExit, match='give the same --lrs-from'):
        evidence.main([a if a != 'q' else 'z' for a in warm] + ['--resume'])


def test_quick_detection_committing_each_run(evidence, tmp_path, cache):
    git = ['git', '-C', str(tmp_path)]
    subprocess.run(git + ['init', '-q'], check=True)
    subprocess.run(git + ['config', 'user.email', 't@t'], check=True)
    subprocess.run(git + ['config', 'user.name', 't'], check=True)
    out = evidence.main(
        [
            '--quick',
            '--tasks',
            'det',
            '--rows',
            'linear_probe',
            'mslora',
            '--lrs',
            '1e-2',
            '--max-extend',
            '0',
            '--seeds',
            '0',
            '--commit',
            '--out',
            str(tmp_path),
            '--name',
            'd',
            '--cache-dir',
            cache,
        ]
    )
    log = subprocess.run(
        git + ['log', '--format=%s', '--name-only'], check=True, capture_output=True, text=True
    ).stdout
    assert log.count('evidence: det/') == 2 and 'det/mslora/lr0.01/s0 (d.jsonl)' in log
    assert {'d.jsonl', 'd.json', 'd.md', 'd_curves.png'} <= set(log.split())
    probe, mslora = out['records']
    assert (probe['row'], probe['lr'], mslora['row'], mslora['lr']) == (
        'linear_probe',
        None,
        'mslora',
        1e-2,
    )
    for r in (probe, mslora):
        assert set(r['test_metrics']) == {'bbox_mAP', 'bbox_mAP_50'}  # Faster R-CNN
        assert r['test'] == r['test_metrics']['bbox_mAP'] and r['peak_mib'] > 0
        assert [s for s, _ in r['val_curve']] == [2, 3] and len(r['loss_curve']) == 2
    assert probe['params']['backbone_trainable'] == 0
    assert mslora['params']['backbone_trainable'] == MSLORA_D32
    # the same neck and heads: they differ by MSLoRA's parameters alone
    assert mslora['params']['trainable'] - probe['params']['trainable'] == MSLORA_D32
    row = out['summary']['tasks']['det']['rows']['mslora']
    assert row['edge'] is True  # one lr, no extension: marked as not bracketed
    assert 'EDGE: not bracketed' in (tmp_path / 'd.md').read_text()


def test_detection_ground_truth_and_coco_scores(evidence):
    from bench import detection

    labels = torch.zeros(8, 8, dtype=torch.int32)
    labels[1:3, 1:4] = 5  # 6 px: dropped at min_area 8... kept at 4
    labels[4:8, 4:6] = 7  # 8 px, at the border
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    x, sample, coco = detection.sample(image, labels, scale=2, min_area=8)
    assert x.shape == (3, 16, 16) and len(coco) == 1
    assert sample.gt_instances.bboxes.tolist() == [[8.0, 8.0, 12.0, 16.0]]
    assert sample.gt_instances.masks.masks.sum() == 8 * 4
    _, sample, coco = detection.sample(image, labels, scale=1, min_area=4)
    assert sample.gt_instances.bboxes.tolist() == [[1.0, 1.0, 4.0, 3.0], [4.0, 4.0, 6.0, 8.0]]
    gt = sample.gt_instances
    perfect = dict(
        img_id=0,
        ori_shape=(8, 8),
        pred_instances=dict(
            bboxes=gt.bboxes,
            scores=torch.ones(2),
            labels=gt.labels,
            masks=torch.from_numpy(gt.masks.masks.astype(bool)),
        ),
    )
    assert detection.coco_ap(perfect, coco, ['bbox', 'segm']) == {
        'bbox_mAP': 100.0,
        'segm_mAP': 100.0,
        'bbox_mAP_50': 100.0,
    }
    nothing = dict(
        perfect,
        pred_instances=dict(
            bboxes=torch.zeros(0, 4),
            scores=torch.zeros(0),
            labels=torch.zeros(0, dtype=torch.long),
            masks=torch.zeros(0, 8, 8, dtype=torch.bool),
        ),
    )
    assert detection.coco_ap(nothing, coco, ['bbox']) == {'bbox_mAP': 0.0, 'bbox_mAP_50': 0.0}
    assert np.array_equal(coco[0]['bbox'], [1, 1, 4, 3])


def test_estimate_projects_the_grid(evidence, tmp_path, cache):
    out = evidence.main(
        [
            '--quick',
            '--tasks',
            'fashion',
            '--rows',
            'linear_probe',
            'mslora',
            '--estimate',
            '2',
            '--out',
            str(tmp_path),
            '--cache-dir',
            cache,
        ]
    )
    probe, mslora = out[('fashion', 'linear_probe')], out[('fashion', 'mslora')]
    # probe: 1 selection run + 1 more seed; MSLoRA: 3 lrs + 1 extension + 1 more seed
    assert (probe['runs'], mslora['runs']) == (2, 5)
    assert mslora['step'] > probe['step'] > 0  # MSLoRA differentiates through the backbone
    text = (tmp_path / 'estimate_quick.md').read_text()
    assert '| fashion | 6 | mslora |' in text and '| fashion | | all |' in text
    assert not list(tmp_path.glob('*.jsonl'))  # no grid ran
