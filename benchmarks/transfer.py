"""Transfer experiment: MSLoRA against its peers on a frozen ImageNet EfficientNet-Lite0.

For every method of ``mmslora.models.peers.METHODS`` (full fine-tuning, linear probe,
BitFit, LoRA, bottleneck Adapter, Mona, MSLoRA) and every task below, the demo config
of the task is loaded, its backbone wrapper is replaced by
``MSLoRABackbone(backbone=<the config's EfficientNet-Lite0 with the real ImageNet
weights>, **wrapper_kwargs(method, ...))``, and nothing else changes: the same data
subset, schedule, optimizer (AdamW through ``TrainableOptimWrapperConstructor``, the
config's lr), neck and head for every method. Each (task, method) is trained with
``randomness=dict(seed=s)`` for several seeds, in this process (MMEngine
``Runner.from_cfg``), evaluating every ``val_interval`` iterations.

Tasks (demo configs under ``configs/demo``):

* ``cls``: Fashion-MNIST classification, ``effnet-lite0-mslora_fashion-mnist.py``,
  top-1 accuracy on a fixed subset of the test split (``indices=N``: the first N);
* ``seg``: nuclei two-class semantic maps, ``upernet_effnet-lite0-mslora_nuclei-256x256.py``,
  mIoU on the held-out tile;
* ``det``: nuclei instances, ``mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py``, COCO
  bbox AP (and mask AP) on the held-out tile. About 2.8 s per iteration on 2 idle CPU
  cores, so ``--quick`` leaves it out (name it in ``--tasks`` to run it anyway).

Schedules (:data:`SCHEDULES`, ``--schedule``):

* ``quick`` (``--quick``): cls 30 iterations at batch 16 on the first 2000 training
  images, evaluated on the first 300 test images every 10 iterations; seg 10
  iterations (batch 4, the 5 training tiles) evaluated every 5. On 2 idle cores a run
  takes 9-19 s, the grid (2 tasks x 7 methods x 3 seeds) 10.6 minutes.
* ``medium``: cls 120 iterations on 4000 / 600 images, seg 40, det 20; all three tasks,
  59 minutes on 2 idle cores: the longest grid that fits a CPU session.
* ``full`` (default): cls 1000 iterations on 10000 / 2000 images, seg 500, det 300;
  hours of CPU per task, meant for a GPU or a long CPU job.

A JSON resumed with another schedule keeps its other runs, but the table and the plot
report only the runs of the schedule given.

Adapter sizes (:data:`ADAPTER_OVERRIDES`): on this 3.4 M-parameter backbone every
block adapter uses D = 32 (the demo configs' MSLoRA setting; bottleneck Adapter and
Mona get the same width so that the comparison is at equal bottleneck width), MSLoRA
keeps G = 8 groups, LoRA keeps the preset's rank 8 (alpha 8) on every Linear and
non-grouped Conv2d.

Outputs (``--out``, default ``benchmarks/results``): ``transfer.json`` (every run:
metric curve, final metric, parameter counts, wall time; and the mean / std summary),
``transfer.md`` (table, exact command, date) and ``transfer_convergence.png`` (metric
against iteration, mean over seeds with a +-1 std band). The JSON is rewritten after
every run, and ``--resume`` skips runs it already holds.

Usage::

    .venv/bin/python benchmarks/transfer.py --quick            # cls + seg, 3 seeds
    .venv/bin/python benchmarks/transfer.py --schedule medium  # cls + seg + det, ~60 min
    .venv/bin/python benchmarks/transfer.py                    # cls + seg + det, long
    .venv/bin/python benchmarks/transfer.py --quick --tasks cls --methods mslora lora
"""
import argparse
import copy
import datetime
import json
import logging
import os
import os.path as osp
import platform
import shutil
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmslora  # noqa: E402,F401  (registers the modules)
from mmslora.models.peers import METHODS, apply_method, wrapper_kwargs  # noqa: E402
from mmslora.models import count_parameters  # noqa: E402

ALL_METHODS = ('full', 'linear_probe', 'bitfit', 'lora', 'adapter', 'mona', 'mslora')
METHOD_NAMES = dict(full='Full fine-tuning', linear_probe='Linear probe', bitfit='BitFit',
                    lora='LoRA', adapter='Adapter', mona='Mona', mslora='MSLoRA')
# per-method adapter overrides on EfficientNet-Lite0 (merged into METHODS' adapter dicts)
ADAPTER_OVERRIDES: Dict[str, dict] = dict(
    adapter=dict(hidden_dim=32), mona=dict(hidden_dim=32), mslora=dict(hidden_dim=32))

TASKS = dict(
    cls=dict(config='configs/demo/effnet-lite0-mslora_fashion-mnist.py',
             title='Fashion-MNIST classification', metric='accuracy/top1',
             metric_name='top-1 acc. (%)', extra=()),
    seg=dict(config='configs/demo/upernet_effnet-lite0-mslora_nuclei-256x256.py',
             title='Nuclei segmentation (2 classes)', metric='mIoU',
             metric_name='mIoU (%)', extra=('aAcc', )),
    det=dict(config='configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py',
             title='Nuclei detection (Mask R-CNN)', metric='coco/bbox_mAP',
             metric_name='bbox AP (%)', extra=('coco/segm_mAP', 'coco/bbox_mAP_50')),
)

# schedules: iterations, evaluation interval, and the data subset sizes (cls only)
SCHEDULES = dict(
    quick=dict(cls=dict(iters=30, val_interval=10, n_train=2000, n_val=300, batch_size=16),
               seg=dict(iters=10, val_interval=5),
               det=dict(iters=30, val_interval=15)),
    # about 60 min on 2 idle cores, all three tasks
    medium=dict(cls=dict(iters=120, val_interval=30, n_train=4000, n_val=600, batch_size=16),
                seg=dict(iters=40, val_interval=10),
                det=dict(iters=20, val_interval=10)),
    full=dict(cls=dict(iters=1000, val_interval=100, n_train=10000, n_val=2000),
              seg=dict(iters=500, val_interval=50),
              det=dict(iters=300, val_interval=50)),
)
# the tasks each schedule runs by default (det: ~2.8 s/iteration x 21 runs does not fit
# the quick budget of about 20 minutes)
DEFAULT_TASKS = dict(quick=('cls', 'seg'), medium=('cls', 'seg', 'det'),
                     full=('cls', 'seg', 'det'))


def method_overrides(method: str) -> dict:
    """The :data:`ADAPTER_OVERRIDES` of ``method`` as overrides of ``wrapper_kwargs``."""
    override = ADAPTER_OVERRIDES.get(method)
    if override and METHODS[method].get('adapter') is not None:
        return dict(adapter=dict(override))
    return {}


def method_kwargs(method: str) -> dict:
    """The wrapper kwargs of ``method`` on EfficientNet-Lite0 (with ADAPTER_OVERRIDES)."""
    return wrapper_kwargs(method, **method_overrides(method))


def prepare_data(task: str) -> None:
    """Create the task's data under ``data/`` when it is missing."""
    import importlib.util
    name = 'fashion_mnist' if task == 'cls' else 'nuclei'
    spec = importlib.util.spec_from_file_location(
        f'_transfer_{name}', osp.join(ROOT, 'tools', 'dataset_converters', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if task == 'cls':
        module.convert_fashion_mnist(osp.join(ROOT, 'data/fashion_mnist'))
    else:
        module.convert_nuclei(osp.join(ROOT, 'data/nuclei'), verbose=False)


def build_cfg(task: str, method: str, seed: int, iters: int, val_interval: int,
              work_dir: str, n_train: Optional[int] = None, n_val: Optional[int] = None,
              batch_size: Optional[int] = None):
    """The task's demo config with only the wrapper kwargs, schedule length, seed and
    (cls) subset sizes changed."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, TASKS[task]['config']))
    cfg.model.backbone = apply_method(cfg.model.backbone, method, **method_overrides(method))
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    # the schedule, scaled to `iters` the way the config scales its own max_iters
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=val_interval)
    warm = max(1, min(iters // 5, 20 if task != 'det' else 50))
    if task == 'det':
        cfg.param_scheduler = [
            dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warm),
            dict(type='MultiStepLR', by_epoch=False, begin=0, end=iters,
                 milestones=[max(1, int(iters * 0.8))], gamma=0.1)]
    elif task == 'seg':
        cfg.param_scheduler = [
            dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warm),
            dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warm, end=iters, by_epoch=False)]
    else:
        cfg.param_scheduler = [
            dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warm),
            dict(type='CosineAnnealingLR', by_epoch=False, begin=warm, end=iters,
                 eta_min=1e-6)]
    # no checkpoints, images or per-iteration chatter: only the metrics are wanted
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 9,
                                        save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=max(iters, 1))
    if 'visualization' in cfg.default_hooks:
        cfg.default_hooks.visualization = dict(
            type=cfg.default_hooks.visualization.type, draw=False)
    if cfg.get('visualizer') is not None:  # a global instance: one name per run
        cfg.visualizer.name = f'transfer_{task}_{method}_{seed}_{time.time_ns()}'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    # absolute data roots, whatever the working directory
    root = osp.join(ROOT, 'data', 'fashion_mnist' if task == 'cls' else 'nuclei') + '/'
    for loader in ('train_dataloader', 'val_dataloader'):
        dataset = cfg[loader].dataset
        while 'dataset' in dataset and 'data_root' not in dataset:  # dataset wrappers
            dataset = dataset.dataset
        dataset.data_root = root
    if task == 'det':
        cfg.val_evaluator.ann_file = root + 'annotations/instances_val.json'
        cfg.test_evaluator = cfg.val_evaluator
    if task == 'cls':
        if n_train is not None:
            cfg.train_dataloader.dataset.indices = n_train
        if n_val is not None:
            cfg.val_dataloader.dataset.indices = n_val
        cfg.test_dataloader = cfg.val_dataloader
    if batch_size is not None:
        cfg.train_dataloader.batch_size = batch_size
    return cfg


class _Recorder:
    """A hook that keeps ``(iteration, metrics)`` after every validation."""

    def __new__(cls):
        from mmengine.hooks import Hook

        class MetricRecorder(Hook):
            priority = 'LOWEST'

            def __init__(self):
                self.curve: List[dict] = []

            def after_val_epoch(self, runner, metrics=None):
                values = {}
                for k, v in (metrics or {}).items():
                    try:
                        values[k] = float(v)
                    except (TypeError, ValueError):
                        pass
                self.curve.append(dict(iter=runner.iter, **values))

        return MetricRecorder()


def run_one(task: str, method: str, seed: int, work_root: str, keep_work_dir=False,
            **schedule) -> dict:
    """Train one (task, method, seed) in this process; return its record."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    work_dir = osp.join(work_root, f'{task}_{method}_s{seed}')
    shutil.rmtree(work_dir, ignore_errors=True)
    cfg = build_cfg(task, method, seed, work_dir=work_dir, **schedule)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    start = time.time()
    runner = Runner.from_cfg(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    built = time.time()
    runner.train()
    wall = time.time() - start
    report = count_parameters(runner.model)
    key = TASKS[task]['metric']
    curve = complete_curve(task, [
        dict(iter=p['iter'], **{k: p[k] for k in (key, ) + TASKS[task]['extra'] if k in p})
        for p in recorder.curve])
    if not curve or key not in curve[-1]:
        raise RuntimeError(f'{task}/{method}/seed {seed}: no {key!r} in {recorder.curve}')
    record = dict(task=task, method=method, seed=seed, iters=schedule['iters'],
                  metric=key, final=curve[-1][key],
                  extra={k: curve[-1][k] for k in TASKS[task]['extra'] if k in curve[-1]},
                  curve=curve, wall_s=round(wall, 1), build_s=round(built - start, 1),
                  params=dict(total=report.total, trainable=report.trainable,
                              backbone=report.backbone, adapter=report.adapter,
                              backbone_trainable=report.backbone_trainable))
    del runner
    if not keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    return record


def complete_curve(task: str, curve: List[dict]) -> List[dict]:
    """``curve`` with every detection evaluation that has no metrics set to AP 0 and
    marked ``no_detections`` (mmdet's CocoMetric returns no metrics when nothing was
    detected)."""
    if task != 'det':
        return curve
    keys = (TASKS[task]['metric'], ) + TASKS[task]['extra']
    return [p if keys[0] in p else dict({k: 0.0 for k in keys}, no_detections=True, **p)
            for p in curve]


def load_results(json_path: str) -> dict:
    """A transfer.json, its curves completed as :func:`complete_curve` does."""
    with open(json_path) as f:
        results = json.load(f)
    for r in results['runs']:
        r['curve'] = complete_curve(r['task'], r['curve'])
    return results


def _scale(task: str, value: float) -> float:
    """mmpretrain and mmseg log percentages, mmdet's COCO metric fractions."""
    return value * 100 if task == 'det' else value


def on_schedule(records: Sequence[dict], schedules: Dict[str, dict]) -> List[dict]:
    """The records run with the iterations of ``schedules`` (a resumed JSON may also
    hold runs of another schedule; they are kept in it but not reported)."""
    return [r for r in records
            if r['task'] in schedules and r['iters'] == schedules[r['task']]['iters']]


def summarize(records: Sequence[dict]) -> List[dict]:
    """Mean and (sample) standard deviation over seeds, per (task, method)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        groups.setdefault((r['task'], r['method']), []).append(r)
    rows = []
    for (task, method), rs in groups.items():
        finals = [_scale(task, r['final']) for r in rs]
        extra = {}
        for k in rs[0]['extra']:
            vals = [_scale(task, r['extra'][k]) for r in rs if k in r['extra']]
            extra[k] = dict(mean=statistics.fmean(vals),
                            std=statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append(dict(task=task, method=method, seeds=[r['seed'] for r in rs],
                         mean=statistics.fmean(finals),
                         std=statistics.stdev(finals) if len(finals) > 1 else 0.0,
                         per_seed=finals, extra=extra, params=rs[0]['params'],
                         wall_s=statistics.fmean(r['wall_s'] for r in rs)))
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    task_order = {t: i for i, t in enumerate(TASKS)}
    rows.sort(key=lambda r: (task_order[r['task']], order.get(r['method'], 99)))
    return rows


def write_markdown(path: str, summary: List[dict], meta: dict) -> None:
    lines = ['# Transfer experiment: frozen ImageNet EfficientNet-Lite0', '',
             f"Date: {meta['date']}  ", f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}, torch {meta['torch']}, "
             f"{meta['threads']} threads; total wall time {meta['wall_min']:.1f} min  ",
             f"Seeds: {meta['seeds']}; mean +- sample std over seeds.", '']
    for task in TASKS:
        rows = [r for r in summary if r['task'] == task]
        if not rows:
            continue
        spec, sched = TASKS[task], meta['schedules'].get(task, {})
        lines += [f"## {spec['title']}", '',
                  f"Config `{spec['config']}`; schedule: {sched}; seeds "
                  f"{sorted({s for r in rows for s in r['seeds']})}.", '']
        extra_keys = list(rows[0]['extra'])
        head = (['method', 'trainable in backbone', '% of backbone', 'trainable (all)',
                 spec['metric_name']] + extra_keys + ['per seed', 's / run'])
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        best = max(r['mean'] for r in rows)
        for r in rows:
            p = r['params']
            metric = (f"{r['mean']:.2f} +- {r['std']:.2f}" if len(r['per_seed']) > 1
                      else f"{r['mean']:.2f} (1 seed)")
            if r['mean'] == best:
                metric = f'**{metric}**'
            cells = [METHOD_NAMES.get(r['method'], r['method']), f"{p['backbone_trainable']:,d}",
                     f"{100 * p['backbone_trainable'] / max(p['backbone'], 1):.2f}",
                     f"{p['trainable']:,d}", metric]
            cells += [f"{r['extra'][k]['mean']:.2f} +- {r['extra'][k]['std']:.2f}"
                      for k in extra_keys]
            cells += [', '.join(f'{v:.2f}' for v in r['per_seed']), f"{r['wall_s']:.0f}"]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    lines += ['Adapter sizes: ' + '; '.join(
        f"{m}: {method_kwargs(m)}" for m in meta['methods']), '']
    if meta.get('notes'):
        lines += ['Notes:', ''] + [f'* {n}' for n in meta['notes']] + ['']
    lines += ['Convergence: `transfer_convergence.png`; every run: `transfer.json`.', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def plot_convergence(path: str, records: Sequence[dict]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    tasks = [t for t in TASKS if any(r['task'] == t for r in records)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5.5 * len(tasks), 7.5), 4.2),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in ALL_METHODS:
            rs = [r for r in records if r['task'] == task and r['method'] == method]
            if not rs:
                continue
            its = [p['iter'] for p in rs[0]['curve']]
            vals = np.array([[_scale(task, p[r['metric']]) for p in r['curve']] for r in rs
                             if len(r['curve']) == len(its)])
            mean, std = vals.mean(0), vals.std(0, ddof=1) if len(vals) > 1 else 0 * vals[0]
            style = dict(lw=2.5, color='black') if method == 'mslora' else dict(lw=1.3)
            line, = ax.plot(its, mean, marker='o', ms=3, label=METHOD_NAMES[method], **style)
            ax.fill_between(its, mean - std, mean + std, alpha=0.15, color=line.get_color())
        ax.set_title(TASKS[task]['title'])
        ax.set_xlabel('iteration')
        ax.set_ylabel(TASKS[task]['metric_name'])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc='lower right')
    fig.suptitle('Frozen ImageNet EfficientNet-Lite0: mean over seeds, band = +-1 std',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_grid(tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
             schedules: Dict[str, dict], work_root: str, records: Optional[List[dict]] = None,
             on_record=None, verbose: bool = True) -> List[dict]:
    """Every (task, method, seed) not already in ``records``; returns all records."""
    records = list(records or [])
    done = {(r['task'], r['method'], r['seed'], r['iters']) for r in records}
    for task in tasks:
        prepare_data(task)
        for seed in seeds:  # seed-major: a partial grid still covers every method
            for method in methods:
                if (task, method, seed, schedules[task]['iters']) in done:
                    continue
                record = run_one(task, method, seed, work_root, **schedules[task])
                records.append(record)
                if verbose:
                    print(f"[transfer] {task:3s} {method:12s} seed {seed}: "
                          f"{record['metric']} = {record['final']:.4f}  "
                          f"(trainable {record['params']['trainable']:,d}, "
                          f"{record['wall_s']:.0f} s)", flush=True)
                if on_record is not None:
                    on_record(records)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--schedule', choices=list(SCHEDULES), default='full',
                        help='quick: ~11 min on 2 cores (cls, seg); medium: ~60 min on 2 '
                             'cores (cls, seg, det); full: long schedules (a GPU or a '
                             'long CPU job)')
    parser.add_argument('--quick', action='store_true', help='same as --schedule quick')
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS), default=None)
    parser.add_argument('--methods', nargs='+', choices=list(ALL_METHODS),
                        default=list(ALL_METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=None, help='override every task\'s')
    parser.add_argument('--val-interval', type=int, default=None)
    parser.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'transfer'))
    parser.add_argument('--resume', action='store_true',
                        help='keep the runs already in OUT/transfer.json')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite transfer.md and the plot from OUT/transfer.json')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument('--note', action='append', default=[],
                        help='a line for the notes of transfer.md')
    args = parser.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    mode = 'quick' if args.quick else args.schedule
    tasks = args.tasks or DEFAULT_TASKS[mode]
    schedules = copy.deepcopy({t: SCHEDULES[mode][t] for t in tasks})
    for s in schedules.values():
        if args.iters:
            s['iters'] = args.iters
        if args.val_interval:
            s['val_interval'] = args.val_interval
        s['val_interval'] = min(s['val_interval'], s['iters'])
    os.makedirs(args.out, exist_ok=True)
    json_path = osp.join(args.out, 'transfer.json')
    records, commands, prior_min = [], [], 0.0
    command = '.venv/bin/python benchmarks/transfer.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    if args.resume and osp.exists(json_path):
        prior = load_results(json_path)
        records = prior['runs']
        commands = prior['meta'].get('commands', [prior['meta']['command']])
        prior_min = prior['meta']['wall_min']
        schedules = dict(prior['meta']['schedules'], **schedules)
    if args.report_only:
        if not osp.exists(json_path):
            raise FileNotFoundError(f'--report-only: no {json_path}')
        prior = load_results(json_path)
        meta = dict(prior['meta'], notes=prior['meta'].get('notes', []) + list(args.note))
        reported = on_schedule(prior['runs'], meta['schedules'])
        summary = summarize(reported)
        with open(json_path, 'w') as f:
            json.dump(dict(meta=meta, summary=summary, runs=prior['runs']), f, indent=1)
        write_markdown(osp.join(args.out, 'transfer.md'), summary, meta)
        plot_convergence(osp.join(args.out, 'transfer_convergence.png'), reported)
        print(open(osp.join(args.out, 'transfer.md')).read())
        return
    commands = commands + [command.strip()]
    notes = list(args.note)
    if 'det' not in tasks and not any(r['task'] == 'det' for r in records):
        notes.append('Detection (Mask R-CNN, ~2.8 s/iteration on 2 idle cores) is not in '
                     'this run: 7 methods x 3 seeds of it do not fit the quick budget; '
                     '`--tasks det` or `--schedule medium` runs it.')
    start = time.time()

    def save(recs):
        reported = on_schedule(recs, schedules)
        summary = summarize(reported)
        meta = dict(date=datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
                    command=' && '.join(commands), commands=commands, mode=mode,
                    schedules=schedules, seeds=sorted({r['seed'] for r in reported}),
                    methods=[m for m in ALL_METHODS if any(r['method'] == m for r in reported)],
                    wall_min=prior_min + (time.time() - start) / 60,
                    machine=f'{platform.machine()}, {os.cpu_count()} CPUs',
                    torch=torch.__version__, threads=torch.get_num_threads(), notes=notes,
                    adapter_sizes={m: method_kwargs(m) for m in args.methods})
        with open(json_path, 'w') as f:
            json.dump(dict(meta=meta, summary=summary, runs=recs), f, indent=1)
        write_markdown(osp.join(args.out, 'transfer.md'), summary, meta)
        plot_convergence(osp.join(args.out, 'transfer_convergence.png'), reported)

    records = run_grid(tasks, args.methods, args.seeds, {t: schedules[t] for t in tasks},
                       args.work_dir,
                       records=records, on_record=save)
    save(records)
    print(open(osp.join(args.out, 'transfer.md')).read())


if __name__ == '__main__':
    main()
