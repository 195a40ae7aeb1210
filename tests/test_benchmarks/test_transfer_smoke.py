"""Smoke test of benchmarks/transfer.py: 2 iterations of two methods on tiny subsets."""
import json

from mmslora_testing import load_tool


def test_transfer_smoke(tmp_path):
    transfer = load_tool('benchmarks/transfer.py')
    assert set(transfer.ALL_METHODS) <= set(transfer.METHODS)
    schedules = dict(cls=dict(iters=2, val_interval=1, n_train=16, n_val=16, batch_size=8))
    records = transfer.run_grid(['cls'], ['linear_probe', 'mslora'], [0], schedules,
                                str(tmp_path / 'work'), verbose=False)
    assert [(r['task'], r['method'], r['seed']) for r in records] == [
        ('cls', 'linear_probe', 0), ('cls', 'mslora', 0)]
    for r in records:
        assert r['metric'] == 'accuracy/top1'
        assert [p['iter'] for p in r['curve']] == [1, 2]
        assert all(0.0 <= p['accuracy/top1'] <= 100.0 for p in r['curve'])
        assert r['final'] == r['curve'][-1]['accuracy/top1']
        assert r['params']['backbone'] > 3_000_000  # EfficientNet-Lite0, 3.4 M
        assert 0 < r['params']['trainable'] < r['params']['total']
    probe, mslora = records
    assert probe['params']['backbone_trainable'] == 0
    assert probe['params']['trainable'] == 1280 * 10 + 10  # the linear head alone
    share = mslora['params']['backbone_trainable'] / mslora['params']['backbone']
    assert 0 < share < 0.05
    assert mslora['params']['adapter'] == mslora['params']['backbone_trainable']

    summary = transfer.summarize(records)
    assert [(s['task'], s['method']) for s in summary] == [
        ('cls', 'linear_probe'), ('cls', 'mslora')]
    assert all(s['std'] == 0.0 and 0 <= s['mean'] <= 100 for s in summary)
    meta = dict(date='today', command='transfer.py --smoke', schedules=schedules, seeds=[0],
                methods=['linear_probe', 'mslora'], wall_min=0.1, machine='cpu',
                torch='x', threads=1, notes=['smoke'])
    md = tmp_path / 'transfer.md'
    transfer.write_markdown(str(md), summary, meta)
    text = md.read_text()
    assert 'Linear probe' in text and 'MSLoRA' in text and 'transfer.py --smoke' in text
    png = tmp_path / 'transfer_convergence.png'
    transfer.plot_convergence(str(png), records)
    assert png.stat().st_size > 1000
    json.dumps(records)  # serialisable


def test_an_evaluation_without_detections_counts_as_ap_zero(tmp_path):
    """mmdet's CocoMetric returns no metrics when nothing was detected; the report
    (also of a JSON written before this rule) reads that as AP 0, marked."""
    transfer = load_tool('benchmarks/transfer.py')
    curve = [dict(iter=10), dict(iter=20, **{'coco/bbox_mAP': 0.3, 'coco/segm_mAP': 0.2,
                                             'coco/bbox_mAP_50': 0.5})]
    done = transfer.complete_curve('det', curve)
    assert done[0] == {'iter': 10, 'coco/bbox_mAP': 0.0, 'coco/segm_mAP': 0.0,
                       'coco/bbox_mAP_50': 0.0, 'no_detections': True}
    assert done[1] == curve[1]
    assert transfer.complete_curve('cls', [dict(iter=1)]) == [dict(iter=1)]
    path = tmp_path / 'transfer.json'
    path.write_text(json.dumps(dict(runs=[dict(task='det', curve=curve)])))
    assert transfer.load_results(str(path))['runs'][0]['curve'] == done
