"""Smoke test of benchmarks/merged_cost.py on a narrow ResNet-18: every row is timed,
and the merged and exported rows compute the hooked LoRA model's outputs."""

import torch

from mmslora_testing import load_tool


def test_merged_cost_rows_on_a_narrow_backbone():
    bench = load_tool('benchmarks/merged_cost.py')
    cfg = dict(type='mmdet.ResNet', depth=18, base_channels=16, init_cfg=None)
    result = bench.measure('R-18', 'mmdet', cfg, torch.randn(1, 3, 32, 32), rounds=2, warmup=1)
    rows = result['rows']
    assert list(rows) == ['plain', 'lora', 'lora/merged', 'lora/exported']
    assert rows['plain']['infer_ratio'] == 1.0
    assert all(row['infer_s'] > 0 for row in rows.values())
    for name in ('lora/merged', 'lora/exported'):
        assert rows[name]['max_rel_error'] < 1e-4
    meta = dict(
        command='python benchmarks/merged_cost.py',
        date='today',
        batch=1,
        img=32,
        rounds=2,
        warmup=1,
        threads=1,
        torch=torch.__version__,
        cpu='cpu',
    )
    text = bench.markdown({'R-18': result}, meta)
    assert '| lora/exported |' in text and 'Command: `python benchmarks/merged_cost.py`' in text
