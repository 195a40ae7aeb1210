"""Smoke test of benchmarks/detector_cost.py: the demo's Mask R-CNN on real nuclei
images, two methods, one round at 128 px; and the per-block profile at 64 px."""

import json

from mmslora_testing import load_tool


def test_detector_table(tmp_path):
    bench = load_tool('benchmarks/detector_cost.py')
    result = bench.main(
        [
            '--methods',
            'full',
            'mslora',
            '--rounds',
            '1',
            '--warmup',
            '0',
            '--img',
            '128',
            '--batch',
            '1',
            '--no-blocks',
            '--clock',
            'cpu',
            '--out',
            str(tmp_path),
        ]
    )
    rows = result['rows']
    assert list(rows) == ['full', 'mslora']
    assert rows['full']['time_ratio'] == 1.0 and rows['full']['peak_ratio'] == 1.0
    assert rows['full']['share'] == 1.0
    assert 0 < rows['mslora']['share'] < 0.05
    for row in rows.values():
        assert row['median_s'] > 0 and row['time_ratio'] > 0 and row['peak_ratio'] > 0
        assert row['persistent_bytes'] > 0 and row['step_peak_bytes'] > 0
    # full fine-tuning holds AdamW state for the whole backbone
    assert rows['full']['persistent_bytes'] > rows['mslora']['persistent_bytes']
    assert len(result['targets']) == 2
    assert all(line.startswith(('meets', 'MISSES')) for line in result['targets'])
    saved = json.loads((tmp_path / 'detector_cost.json').read_text())
    assert saved['meta']['clock'] == 'cpu'
    assert saved['meta']['img'] == 128 and saved['meta']['input_shapes'] == [[3, 128, 128]]
    md = (tmp_path / 'detector_cost.md').read_text()
    assert '| mslora | 86,208 | 2.56% |' in md and 'n/a' not in md
    assert not (tmp_path / 'blocks.md').exists()


def test_block_profile_widths():
    bench = load_tool('benchmarks/detector_cost.py')
    cfg = bench.load_config(img=64, batch=1)
    profile = bench.profile_blocks(cfg, img=64, batch=1, repeats=1)
    assert list(profile) == ['mslora', 'mslora_ratio']
    default, ratio = profile['mslora']['blocks'], profile['mslora_ratio']['blocks']
    assert len(default) == len(ratio) == 16
    first = default[0]
    assert (first['block'], first['channels'], first['hw']) == ('stages.0.0', 16, [32, 32])
    assert {b['width'] for b in default} == {32}
    # max_hidden_ratio=0.5 with groups 8: C 16 and 24 -> 8, C 40 -> 16, wider -> 32
    assert [b['width'] for b in ratio[:5]] == [8, 8, 8, 16, 16]
    for b in default + ratio:
        assert b['block_s'] > 0 and b['adapter_s'] > 0
    stages = profile['mslora']['stages']
    assert sum(s['blocks'] for s in stages.values()) == 16
