"""benchmarks/evidence.py: the statistics on hand-made numbers, the lr choice, the
per-stage block selection, the batches, and the whole protocol on its --quick profile
(a few steps of two methods and one ablation on two tasks, two lrs, two seeds)."""
import builtins
import json
import math
import statistics

import pytest
import torch

from mmslora_testing import load_tool


@pytest.fixture(scope='module')
def evidence():
    return load_tool('benchmarks/evidence.py')


def test_paired_stats_on_hand_made_numbers(evidence):
    # d = (2, 3, 3): mean 8/3, sample std sqrt(1/3), t = (8/3) / (sqrt(1/3) / sqrt(3)) = 8
    p = evidence.paired_stats([3.0, 5.0, 7.0], [1.0, 2.0, 4.0])
    assert p['diffs'] == [2.0, 3.0, 3.0] and p['n'] == 3
    assert p['mean'] == pytest.approx(8 / 3)
    assert p['std'] == pytest.approx(math.sqrt(1 / 3))
    assert p['t'] == pytest.approx(8.0)
    if p['p'] is not None:  # scipy present: two-sided p of t = 8 with 2 df = 1 - 8 / sqrt(66)
        assert p['p'] == pytest.approx(1 - 8 / math.sqrt(66))
    assert p['exceeds_spread'] is True
    # a difference smaller than its spread
    q = evidence.paired_stats([1.0, 2.0, 3.0], [2.0, 1.0, 2.5])  # d = (-1, 1, 0.5)
    assert q['mean'] == pytest.approx(1 / 6)
    assert q['std'] == pytest.approx(statistics.stdev([-1, 1, 0.5]))
    assert q['exceeds_spread'] is False
    # equal differences (up to float rounding): no spread, infinite t
    r = evidence.paired_stats([4.1666667, 29.17], [0.0, 25.0033333])
    assert r['std'] == 0.0 and r['t'] == math.inf and r['exceeds_spread'] is True
    assert evidence.paired_stats([1.0, 2.0], [1.0, 2.0])['t'] == 0.0
    with pytest.raises(ValueError):
        evidence.paired_stats([1.0], [1.0, 2.0])


def test_flatness(evidence):
    f = evidence.flatness([[12, 50.0], [30, 70.0], [48, 79.0], [60, 80.0]])
    assert f['start'] == 79.0 and f['final'] == 80.0 and f['range'] == 1.0
    assert f['rel_change'] == pytest.approx(1 / 80) and f['flat'] is False  # > 1%
    assert evidence.flatness([[10, 50.0], [80, 90.5], [100, 90.0]])['flat'] is True


def test_choose_lr(evidence):
    def rec(lr, val, **kw):
        return dict(dict(task='fashion', method='lora', variant='default', seed=0), lr=lr,
                    val=val, **kw)
    records = [rec(1e-3, 80.0), rec(3e-3, 82.0), rec(1e-2, 82.0), rec(3e-3, 99.0, seed=1),
               rec(3e-3, 99.0, variant='per_stage')]
    lr, scores = evidence.choose_lr(records, 'fashion', 'lora', (1e-3, 3e-3, 1e-2), 0)
    assert lr == 3e-3  # the tie with 1e-2 goes to the smaller lr; other seeds do not count
    assert scores == {1e-3: 80.0, 3e-3: 82.0, 1e-2: 82.0}
    assert evidence.choose_lr(records, 'fashion', 'lora', (3e-4, 1e-3, 3e-3, 1e-2), 0)[0] is None


def test_per_stage_blocks_are_the_last_block_of_each_stage(evidence):
    specs = evidence.per_stage_blocks(evidence.backbone_cfg('cls'))
    repeats = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-Lite0's stages
    assert [s['pattern'] for s in specs] == [
        rf'stages\.{i}\.{n - 1}' for i, n in enumerate(repeats)]
    assert {s['layout'] for s in specs} == {'nchw'}


def test_batches_are_the_same_for_every_method_of_a_seed(evidence):
    x = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8)
    y = torch.arange(40)
    a, b, c = (evidence.Batches('fashion', (x, y), 8, seed) for seed in (0, 0, 1))
    for _ in range(6):  # more than one epoch
        (xa, ya), (xb, yb), (xc, yc) = a.next(), b.next(), c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (8, 1, 16, 16)
    assert not torch.equal(ya, yc)
    image, mask = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), torch.zeros(32, 48)
    xs, ms = evidence.Batches('nuclei', (image, mask.long()), 4, 0, crop=16).next()
    assert xs.shape == (4, 3, 16, 16) and ms.shape == (4, 16, 16)


def test_digits_without_scikit_learn_names_the_install(evidence, monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith('sklearn'):
            raise ImportError('No module named sklearn')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_sklearn)
    with pytest.raises(ImportError, match='pip install scikit-learn'):
        evidence.load_digits(32, 10, 10, 10)


def test_quick_protocol(evidence, tmp_path):
    out = tmp_path / 'out'
    summary = evidence.main(['--quick', '--out', str(out), '--cache-dir', str(tmp_path / 'c')])
    profile = evidence.PROFILES['quick']
    lrs, seeds = list(profile['lrs']), list(profile['seeds'])
    data = json.loads((out / 'evidence_quick.json').read_text())
    records = data['records']
    # 2 tasks x 2 methods x 2 lrs (seed 0), the second seed of each, 1 ablation x 2 seeds
    assert len(records) == 2 * 2 * 2 + 2 * 2 + 2 and not any('error' in r for r in records)
    assert len({r['key'] for r in records}) == len(records)
    assert evidence.planned_runs(data['meta']['profile']) == len(records)
    assert 'Runs: 14 of 14 planned  ' in (out / 'evidence_quick.md').read_text()
    for r in records:
        steps = profile['tasks'][r['task']]['steps']
        assert r['val_curve'][-1] == [steps, r['val']] and 0 <= r['test'] <= 100
        assert r['train_s'] > 0 and r['peak_mib'] > 0 and not r['diverged']
        assert r['params']['backbone'] > 3_000_000  # the real EfficientNet-Lite0
    assert summary['tasks'].keys() == {'fashion', 'nuclei'}
    for task, result in summary['tasks'].items():
        rows = result['rows']
        for method, row in rows.items():
            assert sorted(row['val_by_lr']) == lrs
            assert row['lr'] in lrs and row['val_by_lr'][row['lr']] == max(row['val_by_lr'].values())
            assert row['seeds'] == seeds and row['complete']
            tests = [r['test'] for r in records if (r['task'], r['method'], r['variant'], r['lr'])
                     == (task, method, 'default', row['lr'])]
            assert sorted(row['per_seed']) == sorted(tests) and len(tests) == len(seeds)
            assert row['test_mean'] == pytest.approx(statistics.fmean(tests))
        probe, mslora = rows['linear_probe'], rows['mslora']
        assert probe['params']['backbone_trainable'] == 0
        assert 0 < mslora['params']['backbone_trainable'] < 0.05 * mslora['params']['backbone']
        pair = probe['mslora_minus']
        expected = evidence.paired_stats(mslora['per_seed'], probe['per_seed'])
        assert pair['mean'] == pytest.approx(expected['mean'])
        assert pair['std'] == pytest.approx(expected['std'])
        assert rows['mslora']['mslora_minus'] is None
    ablation = summary['ablations']['fashion']['hidden_dim=16']
    default = summary['tasks']['fashion']['rows']['mslora']
    assert ablation['lr'] == default['lr'] and ablation['seeds'] == seeds
    assert ablation['params']['backbone_trainable'] < default['params']['backbone_trainable']
    assert ablation['minus_default']['mean'] == pytest.approx(
        ablation['test_mean'] - default['test_mean'])
    md = (out / 'evidence_quick.md').read_text()
    assert 'MSLoRA (D 32, G 8)' in md and 'hidden_dim=16' in md and 'Linear probe' in md
    assert (out / 'evidence_quick_convergence.png').stat().st_size > 1000
    # --resume with the same arguments runs nothing again
    evidence.main(['--quick', '--resume', '--out', str(out), '--cache-dir', str(tmp_path / 'c')])
    assert len(json.loads((out / 'evidence_quick.json').read_text())['records']) == len(records)


def test_bf16_autocast_path(evidence):
    """The --amp path (bf16 autocast, as on CUDA) on CPU: a method that takes it trains
    and scores; the preflight names a method whose backward does not take bf16."""
    settings = dict(evidence.PROFILES['quick']['tasks']['fashion'], steps=2)
    x = torch.randint(0, 256, (24, 1, 32, 32), dtype=torch.uint8)
    data = {k: (x, torch.arange(24) % 10) for k in ('fit', 'val', 'test')}
    job = dict(task='fashion', method='lora', variant='default', lr=1e-3, seed=0)
    record = evidence.run_one(job, data, settings, torch.device('cpu'), True, 64)
    assert 0 <= record['test'] <= 100 and record['val_curve'][-1][0] == 2
    evidence.check_amp(torch.device('cpu'), ['linear_probe', 'lora'])  # no exit
