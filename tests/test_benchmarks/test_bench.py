"""benchmarks/bench: the statistics on hand-made numbers, the adaptive lr grid, the
method presets, the batches, the training loop and the report's incomplete cells."""

import math
import statistics

import pytest
import torch

from mmslora_testing import load_tool


@pytest.fixture(scope='module')
def bench():
    load_tool('benchmarks/evidence.py')  # puts benchmarks/ on sys.path
    import bench.grid
    import bench.methods
    import bench.report
    import bench.stats
    import bench.training

    return bench


def test_paired_stats_on_hand_made_numbers(bench):
    paired_stats = bench.stats.paired_stats
    # d = (2, 3, 3): mean 8/3, sample std sqrt(1/3), t = (8/3) / (sqrt(1/3) / sqrt(3)) = 8
    p = paired_stats([3.0, 5.0, 7.0], [1.0, 2.0, 4.0])
    assert p['diffs'] == [2.0, 3.0, 3.0] and p['n'] == 3
    assert p['mean'] == pytest.approx(8 / 3)
    assert p['std'] == pytest.approx(math.sqrt(1 / 3))
    assert p['t'] == pytest.approx(8.0)
    if p['p'] is not None:  # scipy present: two-sided p of t = 8 with 2 df = 1 - 8 / sqrt(66)
        assert p['p'] == pytest.approx(1 - 8 / math.sqrt(66))
    assert p['exceeds_spread'] is True
    q = paired_stats([1.0, 2.0, 3.0], [2.0, 1.0, 2.5])  # d = (-1, 1, 0.5)
    assert q['mean'] == pytest.approx(1 / 6)
    assert q['std'] == pytest.approx(statistics.stdev([-1, 1, 0.5]))
    assert q['exceeds_spread'] is False
    r = paired_stats([4.1666667, 29.17], [0.0, 25.0033333])  # equal up to rounding
    assert r['std'] == 0.0 and r['t'] == math.inf and r['exceeds_spread'] is True
    assert paired_stats([1.0, 2.0], [1.0, 2.0])['t'] == 0.0
    with pytest.raises(ValueError):
        paired_stats([1.0], [1.0, 2.0])


def test_flatness(bench):
    f = bench.stats.flatness([[12, 50.0], [30, 70.0], [48, 79.0], [60, 80.0]])
    assert f['start'] == 79.0 and f['final'] == 80.0 and f['range'] == 1.0
    assert f['rel_change'] == pytest.approx(1 / 80) and f['flat'] is False  # > 1%
    assert bench.stats.flatness([[10, 50.0], [80, 90.5], [100, 90.0]])['flat'] is True


def _rec(lr, val, seed=0, diverged=False, row='lora', task='fashion'):
    key = f'{task}/{row}/lr{lr}/s{seed}'
    return dict(task=task, row=row, lr=lr, seed=seed, val=val, diverged=diverged, key=key)


def test_lr_grid_extends_until_the_choice_is_bracketed(bench):
    choose = bench.grid.choose_lr
    grid = [1e-3, 3e-3, 1e-2]
    records = [_rec(1e-3, 70.0), _rec(3e-3, 75.0), _rec(1e-2, 80.0)]
    assert choose(records[:2], 'fashion', 'lora', grid, 0) == dict(
        lr=None, scores={1e-3: 70.0, 3e-3: 75.0}, next=[1e-2], edge=False, phase='select'
    )
    state = choose(records, 'fashion', 'lora', grid, 0)
    assert state['next'] == [3e-2] and state['phase'] == 'extend' and state['lr'] is None
    state = choose(records + [_rec(3e-2, 79.0)], 'fashion', 'lora', grid, 0)
    assert state['lr'] == 1e-2 and state['done'] and not state['edge']
    # at the low edge the grid goes down; a tie goes to the smaller lr
    low = [_rec(1e-3, 80.0), _rec(3e-3, 80.0), _rec(1e-2, 60.0)]
    assert choose(low, 'fashion', 'lora', grid, 0)['next'] == [3e-4]
    # a diverged run never wins; max_extend stops the extension and marks the edge
    up = records + [_rec(3e-2, 90.0)]
    state = choose(up, 'fashion', 'lora', grid, 0, max_extend=1)
    assert state['lr'] == 3e-2 and state['edge'] is True
    state = choose(up + [_rec(1e-1, 99.0, diverged=True)], 'fashion', 'lora', grid, 0)
    assert state['lr'] == 3e-2 and state['edge'] is False  # bracketed by the diverged run
    # a row without an lr of its own: one run
    probe = [_rec(None, 50.0, row='linear_probe')]
    assert choose(probe, 'fashion', 'linear_probe', [None], 0)['done']


def test_warm_start_centres_the_grid_on_an_earlier_choice(bench):
    earlier = [_rec(1e-3, 70.0), _rec(3e-3, 75.0), _rec(1e-2, 74.0), _rec(1e-2, 90.0, seed=1)]
    assert bench.grid.warm_start(earlier, 'fashion', 'lora', 0) == [1e-3, 3e-3, 1e-2]
    # an earlier choice at an end of the ladder keeps the one neighbour it has
    assert bench.grid.warm_start([_rec(1e-6, 5.0)], 'fashion', 'lora', 0) == [1e-6, 3e-6]
    assert bench.grid.warm_start(earlier, 'fashion', 'mona', 0) is None
    probe = [_rec(None, 50.0, row='linear_probe')]
    assert bench.grid.warm_start(probe, 'fashion', 'linear_probe', 0) is None


def test_next_jobs_select_everything_before_any_test(bench):
    grids = {('fashion', 'lora'): [1e-3, 3e-3], ('fashion', 'linear_probe'): [None]}
    jobs = bench.grid.next_jobs(['fashion'], ['linear_probe', 'lora'], [0, 1, 2], grids, [])
    assert [(j['row'], j['lr'], j['seed']) for j in jobs] == [
        ('linear_probe', None, 0),
        ('lora', 1e-3, 0),
        ('lora', 3e-3, 0),
    ]
    done = [_rec(None, 50.0, row='linear_probe'), _rec(1e-3, 80.0), _rec(3e-3, 70.0)]
    jobs = bench.grid.next_jobs(['fashion'], ['linear_probe', 'lora'], [0, 1, 2], grids, done)
    # lora's choice is its lowest lr: the extension (1 run) comes before the probe's tests
    assert [(j['row'], j['lr'], j['seed'], j['phase']) for j in jobs] == [
        ('lora', 3e-4, 0, 'extend'),
        ('linear_probe', None, 1, 'test'),
        ('linear_probe', None, 2, 'test'),
    ]


def test_next_jobs_run_tests_row_by_row_across_tasks(bench):
    rows, tasks = ['linear_probe', 'lora'], ['fashion', 'nuclei']
    grids = {
        (t, r): [None] if r == 'linear_probe' else [1e-3, 3e-3, 1e-2] for t in tasks for r in rows
    }
    done = [
        _rec(lr, score, row=row, task=task)
        for task in tasks
        for row, lrs in (('linear_probe', [None]), ('lora', [1e-3, 3e-3, 1e-2]))
        for lr, score in zip(lrs, (70.0, 80.0, 75.0))
    ]
    jobs = bench.grid.next_jobs(tasks, rows, [0, 1, 2], grids, done)
    # every task's probe before any task's LoRA: an early stop cuts the last rows
    assert [(j['row'], j['task'], j['seed'], j['phase']) for j in jobs] == [
        ('linear_probe', 'fashion', 1, 'test'),
        ('linear_probe', 'fashion', 2, 'test'),
        ('linear_probe', 'nuclei', 1, 'test'),
        ('linear_probe', 'nuclei', 2, 'test'),
        ('lora', 'fashion', 1, 'test'),
        ('lora', 'fashion', 2, 'test'),
        ('lora', 'nuclei', 1, 'test'),
        ('lora', 'nuclei', 2, 'test'),
    ]
    assert all(j['lr'] == (None if j['row'] == 'linear_probe' else 3e-3) for j in jobs)


def test_report_marks_incomplete_cells(bench):
    plan = dict(
        tasks={'fashion': dict(title='F', metric='top-1 (%)', steps=10)},
        rows=['mslora', 'linear_probe'],
        seeds=[0, 1, 2],
        max_extend=3,
        grids={('fashion', 'mslora'): [1e-3, 3e-3], ('fashion', 'linear_probe'): [None]},
    )
    params = dict(backbone_trainable=0, trainable=12810)

    def run(row, lr, seed, test):
        return dict(
            _rec(lr, 60.0, seed, row=row),
            test=test,
            val_curve=[[5, 50.0], [10, 60.0]],
            train_s=1.0,
            peak_mib=10.0,
            params=params,
        )

    records = [
        run('linear_probe', None, 0, 50.0),
        run('linear_probe', None, 1, 52.0),
        run('mslora', 1e-3, 0, 55.0),
    ]
    summary = bench.report.summarize(records, plan)
    rows = summary['tasks']['fashion']['rows']
    assert rows['mslora']['selected'] is False and rows['mslora']['test_mean'] is None
    assert rows['linear_probe']['per_seed'] == [50.0, 52.0]
    assert rows['linear_probe']['complete'] is False
    text = '\n'.join(
        bench.report.task_lines('fashion', plan['tasks']['fashion'], summary['tasks']['fashion'], 3)
    )
    assert '0.001: 60.0; SELECTING' in text and '51.00 +- 1.41** (2 of 3 seeds)' in text


def test_glance_table_places_mslora_against_each_row(bench):
    plan = dict(
        tasks={'fashion': dict(title='F', metric='top-1 (%)', steps=10)},
        rows=['mslora', 'linear_probe', 'lora', 'bitfit'],
        seeds=[0, 1, 2],
        max_extend=3,
        grids={('fashion', 'mslora'): [None], ('fashion', 'linear_probe'): [None]},
    )
    plan['grids'].update({('fashion', r): [None] for r in ('lora', 'bitfit')})
    tests = dict(
        mslora=[60.0, 62.0, 61.0],
        linear_probe=[50.0, 53.0, 51.0],  # MSLoRA 10 above, the spread 1
        lora=[70.0, 71.0, 73.0],  # MSLoRA 10 below
        bitfit=[61.0, 60.0, 62.5],  # differences -1, +2, -1.5: level
    )
    records = [
        dict(
            _rec(None, 60.0, seed, row=row),
            test=test,
            val_curve=[[5, 50.0], [10, 60.0]],
            train_s=1.0,
            train_cpu_s=2.0 + seed,
            peak_mib=10.0,
            params=dict(backbone_trainable=len(row), trainable=99),
        )
        for row, values in tests.items()
        for seed, test in enumerate(values)
    ]
    text = '\n'.join(bench.report.glance_lines(bench.report.summarize(records, plan), plan))
    assert '| MSLoRA (D 32, G 8) | 61.0 +- 1.0 | 6 | 3 | 10 |' in text
    assert '| Linear probe | above +9.7 | 12 | 3 | 10 |' in text
    assert '| LoRA (r 8) | below -10.3 | 4 | 3 | 10 |' in text
    assert '| BitFit | level -0.2 | 6 | 3 | 10 |' in text


def test_switch_uses_the_package_presets(bench):
    wrapper = dict(type='mmslora.MSLoRABackbone', backbone=dict(type='x'), blocks='auto')
    cfg = bench.methods.switch(wrapper, 'mslora_ratio', bench.methods.DEMO_WIDTHS)
    assert cfg['adapter'] == dict(
        type='mmslora.MSLoRAAdapter', hidden_dim=32, groups=8, max_hidden_ratio=0.5
    )
    assert cfg['blocks'] == 'auto' and cfg['backbone'] == dict(type='x')
    assert bench.methods.switch(wrapper, 'bitfit')['trainable'] == ('bias',)
    assert bench.methods.switch(wrapper, 'lora', bench.methods.DEMO_WIDTHS)['adapter']['rank'] == 8
    with pytest.raises(KeyError, match='unknown row'):
        bench.methods.switch(wrapper, 'mslora_x')


def test_batches_are_the_same_for_every_method_of_a_seed(bench):
    from bench.data import Batches

    x = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8)
    y = torch.arange(40)
    a, b, c = (Batches('cls', (x, y), 8, seed, hflip=True) for seed in (0, 0, 1))
    for _ in range(6):  # more than one epoch
        (xa, ya), (xb, yb), (_, yc) = a.next(), b.next(), c.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (8, 1, 16, 16)
    assert not torch.equal(ya, yc)
    image, mask = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), torch.zeros(32, 48)
    xs, ms = Batches('seg', (image, mask.long()), 4, 0, crop=16).next()
    assert xs.shape == (4, 3, 16, 16) and ms.shape == (4, 16, 16)


def test_fit_trains_the_two_groups_and_the_loss_falls(bench):
    """A linear probe of the real EfficientNet-Lite0 on one fixed batch: the head (at
    head_lr) learns it, the frozen backbone does not move, the memory probe counts."""
    training = bench.training
    model = training.Model('cls', 'linear_probe', 10, seed=0)
    x = torch.randint(
        0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    y = torch.arange(8) % 10
    before = [p.clone() for p in model.backbone.parameters()]
    groups = training.param_groups(model, None, head_lr=1e-1)
    assert len(groups) == 1 and len(groups[0]['params']) == 2  # the head's weight and bias
    with pytest.raises(ValueError, match='its lr must be None'):
        training.param_groups(model, 1e-3, 1e-1)
    result = training.fit(
        model,
        groups,
        lambda: model.loss(x, y),
        lambda: 0.0,
        steps=12,
        eval_at=(0.5, 1.0),
        device=torch.device('cpu'),
    )
    (s1, first), (s2, last) = result['loss_curve']
    assert (s1, s2) == (6, 12) and last < 0.85 * first
    assert all(torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    assert result['peak_mib'] > 0 and not result['diverged']
    assert [s for s, _ in result['val_curve']] == [6, 12]
    assert training.params_record(model)['trainable'] == 1280 * 10 + 10


def test_best_row_flatness_is_set_against_the_seed_spread(bench):
    plan = dict(
        tasks={'fashion': dict(title='F', metric='top-1 (%)', steps=10)},
        rows=['mslora'],
        seeds=[0, 1, 2],
        max_extend=3,
        grids={('fashion', 'mslora'): [None]},
    )
    finals = (58.0, 60.0, 62.0)  # final val scores: std 2.0

    def run(seed, final):
        return dict(
            _rec(None, final, seed, row='mslora'),
            test=50.0,
            val_curve=[[2, 30.0], [8, final - 1.0], [10, final]],
            train_s=1.0,
            peak_mib=10.0,
            params=dict(backbone_trainable=1, trainable=1),
        )

    summary = bench.report.summarize([run(s, f) for s, f in enumerate(finals)], plan)
    row = summary['tasks']['fashion']['rows']['mslora']
    assert row['val_final_std'] == pytest.approx(2.0)
    text = '\n'.join(
        bench.report.task_lines('fashion', plan['tasks']['fashion'], summary['tasks']['fashion'], 3)
    )
    # the mean curve rises 59 -> 60 over the last 20%: 1.67%, not flat, but inside std 2
    assert 'changes by +1.67% (59.00 -> 60.00)' in text
    assert 'NOT flat at the 1% tolerance; the change (1.00 points) is within' in text
    one = bench.report.summarize([run(0, 60.0)], plan)['tasks']['fashion']
    assert one['rows']['mslora']['val_final_std'] is None
    one_text = '\n'.join(bench.report.task_lines('fashion', plan['tasks']['fashion'], one, 3))
    assert 'tolerance.' in one_text and 'spread' not in one_text
