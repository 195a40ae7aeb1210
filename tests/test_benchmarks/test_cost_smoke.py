"""Smoke test of benchmarks/cost.py on a tiny ResNet: every column is filled and the
memory accounting sees what it should."""

import json

import torch
import torch.nn as nn

from mmslora_testing import load_tool


def test_step_peak_bytes_sees_a_large_temporary():
    cost = load_tool('benchmarks/cost.py')
    size = 4 * 2**20  # floats: 16 MiB

    def step():
        big = torch.ones(size)
        big.mul_(2)
        del big

    step()
    peak = cost.step_peak_bytes(step)
    assert 16 * 2**20 <= peak < 20 * 2**20


def test_cost_table_on_a_tiny_backbone(tmp_path):
    cost = load_tool('benchmarks/cost.py')
    cfg = dict(type='mmdet.ResNet', depth=18, out_indices=(3,), init_cfg=None)
    methods = cost.with_fast_path_rows(
        ['full', 'linear_probe', 'lora', 'mslora', 'mslora_cp'], 'both'
    )
    assert methods[:4] == ['full', 'linear_probe', 'linear_probe/off', 'lora']
    result = cost.measure_backbone(
        'R-18', 'mmdet', cfg, methods, batch=1, img=32, rounds=2, warmup=1, log=lambda message: None
    )
    rows = result['rows']
    assert list(rows) == methods
    assert rows['full']['train_ratio'] == 1.0 and rows['full']['memory_ratio'] == 1.0
    assert rows['full']['share'] == 1.0 and rows['linear_probe']['trainable'] == 0
    assert rows['linear_probe']['saved_mib'] == 0
    for row in rows.values():
        assert row['train_s'] > 0 and row['infer_s'] > 0 and row['peak_mib'] > 0
    # the wrapped backbone's weights, gradients and momentum: full FT holds the most
    assert rows['full']['peak_mib'] > rows['linear_probe']['peak_mib']
    assert rows['mslora']['trainable'] == rows['mslora_cp']['trainable'] > 0
    # the fast path keeps no frozen-layer inputs for backward; off, they are kept
    assert rows['mslora']['saved_mib'] < 0.9 * rows['mslora/off']['saved_mib']
    assert rows['mslora']['trainable'] == rows['mslora/off']['trainable']
    meta = dict(
        command='test',
        batch=1,
        img=32,
        rounds=2,
        infer_rounds=2,
        warmup=1,
        threads=1,
        torch='x',
        cpu='cpu',
        cpus=2,
        loadavg='0',
        loadavg_end='0',
        date='today',
        others_cpus={'R-18': 0.0},
    )
    text = cost.markdown({'R-18': result}, meta)
    assert '| mslora |' in text and 'mslora_cp: train' in text and '| mslora/off |' in text
    cost.plot({'R-18': result}, str(tmp_path / 'cost.png'))
    assert (tmp_path / 'cost.png').stat().st_size > 0
    json.dumps(result)  # serialisable as written to cost.json


def test_saved_activation_bytes_leave_parameters_out():
    cost = load_tool('benchmarks/cost.py')
    model = nn.Linear(256, 256)
    trainer = cost.Trainer(model, torch.randn(8, 256), cost.Device('cpu', amp=False))
    # Linear saves its input (8 x 256 floats) for the weight gradient and the loss's
    # pow(2) its output (8 x 256); the weight itself is a parameter and not counted
    assert cost.saved_activation_bytes(trainer) == 2 * 8 * 256 * 4


def test_event_start_on_a_torch_without_nanosecond_times():
    """torch 2.1's profiler events have start_us() and no start_ns()."""
    cost = load_tool('benchmarks/cost.py')

    class Torch21Event:
        def start_us(self):
            return 7

    assert cost.event_start(Torch21Event()) == 7
