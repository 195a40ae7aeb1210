"""Whole-detector training cost of MSLoRA and its peers: the demo's Mask R-CNN.

``cost.py`` measures backbones alone; this measures what a user trains: the demo
detector (``configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py``: Mask R-CNN,
128-channel FPN, the real ImageNet EfficientNet-Lite0 loaded through its init_cfg
``efficientnet-lite0://imagenet`` inside ``MSLoRABackbone``) on the real nuclei tiles
(``tools/dataset_converters/nuclei.py``, converted into a temporary folder), the train
pipeline's ``Resize`` set to ``--img`` px (default 400), batch ``--batch`` (2).

Rows: every method of ``mmslora.models.peers.METHODS`` (switched with ``apply_method``
on the config's ``model.backbone``, as ``tools/train.py --method`` does) plus MSLoRA
variants (:data:`VARIANTS`). The bottleneck widths are the demo's: MSLoRA, Adapter and
Mona at D = 32 (``bench.methods.DEMO_WIDTHS``; the demo config sets MSLoRA's
``hidden_dim=32``), LoRA rank 8.

Per row: the detector is built with mmdet's ``MODELS`` in the mmdet default scope,
``init_weights()``, train mode, AdamW over the parameters with ``requires_grad``. One
training iteration = ``data_preprocessor(batch, training=True)`` + ``model.loss`` +
backward + optimizer step, on one fixed batch of real images taken once from the train
dataloader. Reported:

* trainable share of the backbone (``count_parameters``);
* iteration time: median over interleaved rounds (``cost.interleaved_times``, the order
  rotating each round) after warm-up iterations, and the paired ratio to full
  fine-tuning (``cost.paired_ratio``: median of per-round ratios);
* peak memory: persistent bytes (parameters, buffers, AdamW state; gradients set to
  None) plus ``bench.memory.step_peak_bytes`` of one iteration (the highest rise of the CPU
  allocator's live bytes, from the profiler's memory events); ratio to full.

``--compile`` adds every row compiled as ``<row>+compile``: ``model.backbone.compile(
fullgraph=True)`` and ``model.neck.compile()`` (in place; the RPN and RoI heads stay
eager, their code is data-dependent), measured in the same rounds and set against
compiled full fine-tuning. Targets (:data:`TARGETS`): MSLoRA's iteration <= 0.9x and peak
<= 0.7x full fine-tuning, eager and compiled, printed as ``meets`` / ``MISSES`` lines.

A per-block profile (``blocks.md``; also alone with ``--profile-blocks``) shows where
MSLoRA's cost goes: for the EfficientNet-Lite0 inside ``MSLoRABackbone`` at the
detector's input size, for MSLoRA (D = 32) and ``mslora_ratio``, per adapted block its
channels, map size, adapter width D, the median time of the frozen block's forward +
backward (input requiring grad, block parameters frozen, adapters off) and of its
adapter's forward + backward on a tensor of the block's output shape, their ratio, and
the sums per stage.

The CPU time other processes used during the measurement (``bench.env.CpuMeter``) is
reported; read the ratios with it. ``--clock cpu`` times iterations as this process's
CPU time (best with ``--threads 1``), which a shared machine disturbs far less than
wall time. Outputs in ``--out``: ``detector_cost.md``,
``detector_cost.json``, ``blocks.md``, ``blocks.json``.

Usage::

    .venv/bin/python benchmarks/detector_cost.py --threads 2
    .venv/bin/python benchmarks/detector_cost.py --threads 1 --clock cpu   # shared machine
    .venv/bin/python benchmarks/detector_cost.py --compile --methods full mslora bitfit
    .venv/bin/python benchmarks/detector_cost.py --profile-blocks     # blocks.md alone
    .venv/bin/python benchmarks/detector_cost.py --quick              # 256 px, 2 rounds
"""

import argparse
import copy
import datetime
import json
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import cost  # noqa: E402  (timing helpers; puts the repo on sys.path)
from bench import ROOT  # noqa: E402
from bench.detection import CONFIG, detector_cfg  # noqa: E402
from bench.detection import build_detector as build
from bench.env import CpuMeter, git_commit, run_converter  # noqa: E402
from bench.memory import persistent_bytes, step_peak_bytes  # noqa: E402
from bench.methods import DEMO_WIDTHS, switch  # noqa: E402

from mmslora.models import count_parameters  # noqa: E402
from mmslora.models.peers import METHODS  # noqa: E402
from mmslora.models.wrapper import adapter_key  # noqa: E402

#: MSLoRA's targets against full fine-tuning (eager vs eager, compiled vs compiled)
TARGETS = dict(iteration=0.9, peak=0.7)
#: MSLoRA variants measured besides METHODS (``bench.methods.VARIANTS``)
VARIANTS = ('mslora_ratio', 'mslora_stride2', 'mslora_proj')
ALL_ROWS = list(METHODS) + list(VARIANTS)
#: the rows of the per-block profile
BLOCK_ROWS = ('mslora', 'mslora_ratio')
COMPILED = cost.COMPILED


def log(msg: str) -> None:
    print(f'[{datetime.datetime.now().strftime("%H:%M:%S")}] {msg}', flush=True)


# ------------------------------------------------------------------ config and data
def load_config(img: int, batch: int):
    """The demo config with the train pipeline's Resize at ``img`` px and ``batch``."""
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(ROOT, CONFIG))
    pipeline = cfg.train_dataloader.dataset.pipeline
    resizes = [t for t in pipeline if t['type'] == 'Resize']
    assert len(resizes) == 1, f'expected one Resize in the train pipeline: {pipeline}'
    resizes[0]['scale'] = (img, img)
    cfg.train_dataloader.batch_size = batch
    return cfg


def row_backbone(wrapper: dict, row: str) -> dict:
    """The config's ``MSLoRABackbone`` switched to ``row`` (a ``+compile`` suffix is
    ignored), with the demo's adapter widths."""
    return switch(wrapper, cost.split_compiled(row)[0], DEMO_WIDTHS)


def fixed_batch(cfg, data_root: str) -> dict:
    """One batch of the train dataloader (pipeline included), taken once."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    loader = copy.deepcopy(cfg.train_dataloader)
    loader.dataset.data_root = data_root.rstrip('/') + '/'
    loader.num_workers = 0
    loader.persistent_workers = False
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataloader = Runner.build_dataloader(loader, seed=0)
        return next(iter(dataloader))


def build_detector(cfg, row: str) -> nn.Module:
    model = build(detector_cfg(cfg.model, cost.split_compiled(row)[0]))
    if cost.split_compiled(row)[1]:
        model.backbone.compile(fullgraph=True)  # in place (nn.Module.compile)
        model.neck.compile()
    return model


class DetTrainer:
    """One row's detector, AdamW, and a training iteration on the fixed batch."""

    def __init__(self, model: nn.Module, batch: dict) -> None:
        self.model = model
        self.batch = batch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.05)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        data = self.model.data_preprocessor(
            dict(inputs=list(self.batch['inputs']), data_samples=self.batch['data_samples']),
            training=True,
        )
        losses = self.model.loss(data['inputs'], data['data_samples'])
        loss, _ = self.model.parse_losses(losses)
        loss.backward()
        self.opt.step()

    def persistent_bytes(self) -> int:
        return persistent_bytes(self.model, self.opt)


# ------------------------------------------------------------------ the detector table
def measure(
    cfg, batch: dict, rows: List[str], rounds: int, warmup: int, clock: str = 'wall'
) -> dict:
    device = cost.Device('cpu', amp=False, clock=clock)
    results, trainers = {}, {}
    for row in rows:
        log(f'building {row}')
        model = build_detector(cfg, row)
        report = count_parameters(model)
        results[row] = dict(
            backbone_trainable=report.backbone_trainable,
            backbone=report.backbone,
            share=report.backbone_share,
            trainable=report.trainable,
            total=report.total,
        )
        trainers[row] = DetTrainer(model, batch)
        if cost.split_compiled(row)[1]:  # compile outside the timed rounds
            start = time.perf_counter()
            trainers[row].step()
            results[row]['first_iteration_s'] = time.perf_counter() - start
            log(f'{row}: first (compiling) iteration {results[row]["first_iteration_s"]:.1f} s')
    log(f'timing {len(rows)} rows: {warmup} warm-up + {rounds} interleaved rounds')
    times = cost.interleaved_times(
        {r: t.step for r, t in trainers.items()}, rounds, warmup, device.timed
    )
    for row, trainer in trainers.items():
        reference = 'full' + cost.split_compiled(row)[1]
        persistent = trainer.persistent_bytes()
        trainer.opt.zero_grad(set_to_none=True)
        step_peak = step_peak_bytes(trainer.step)
        results[row].update(
            times=times[row],
            median_s=statistics.median(times[row]),
            persistent_bytes=persistent,
            step_peak_bytes=step_peak,
            peak_bytes=persistent + step_peak,
            reference=reference,
        )
        log(
            f'{row}: {results[row]["median_s"]:.3f} s, peak {(persistent + step_peak) / 2**20:.0f} MB'
        )
    for row, res in results.items():
        ref = res['reference']
        if ref in results:
            res['time_ratio'] = cost.paired_ratio(times, row, ref)
            res['peak_ratio'] = res['peak_bytes'] / results[ref]['peak_bytes']
    return results


def target_lines(results: dict) -> List[str]:
    lines = []
    for suffix in ('', COMPILED):
        row, ref = 'mslora' + suffix, 'full' + suffix
        if row not in results or ref not in results:
            continue
        res = results[row]
        for key, ratio_key, label in (
            ('iteration', 'time_ratio', 'iteration time'),
            ('peak', 'peak_ratio', 'peak memory'),
        ):
            value, target = res[ratio_key], TARGETS[key]
            verdict = 'meets' if value <= target else 'MISSES'
            lines.append(f'{verdict}: {row} {label} {value:.3f}x {ref} (target <= {target}x)')
    return lines


def table(results: dict) -> List[str]:
    lines = [
        '| row | trainable in backbone | share of backbone | iteration (s, median) '
        '| x full | peak (MB) | x full | persistent (MB) | step rise (MB) |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for row, r in results.items():

        def fmt(key, spec='.3f', r=r):
            return format(r[key], spec) if key in r else 'n/a'

        lines.append(
            f'| {row} | {r["backbone_trainable"]:,} | {100 * r["share"]:.2f}% '
            f'| {r["median_s"]:.3f} | {fmt("time_ratio")} | {r["peak_bytes"] / 2**20:.1f} '
            f'| {fmt("peak_ratio")} | {r["persistent_bytes"] / 2**20:.1f} '
            f'| {r["step_peak_bytes"] / 2**20:.1f} |'
        )
    return lines


# ------------------------------------------------------------------ per-block profile
def adapter_width(adapter: nn.Module) -> Optional[int]:
    proj = getattr(adapter, 'proj', None)
    if proj is not None:
        return proj.down.out_channels
    trans = getattr(adapter, 'trans', None)
    return trans.reduce.out_channels if trans is not None else None


def profile_blocks(
    cfg,
    img: int,
    batch: int,
    repeats: int = 7,
    rows=BLOCK_ROWS,
    threads: Optional[int] = 1,
    clock: str = 'cpu',
) -> dict:
    """Per adapted block of the backbone (each row of ``rows``): shapes, D, and the
    median forward+backward time of the frozen block and of its adapter.

    Every block's and adapter's step of every row is timed in the same interleaved
    rounds (``cost.interleaved_times``, one warm-up), by default as this process's CPU
    time at 1 thread (``clock='cpu'``): on a machine shared with other jobs wall time
    of a few-ms step mostly measures when the scheduler ran us."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _profile_blocks(cfg, img, batch, repeats, rows, clock)
    finally:
        torch.set_num_threads(previous)


def _profile_blocks(cfg, img, batch, repeats, rows, clock) -> dict:
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    out, fns, pending = {}, {}, {}
    for row in rows:
        with DefaultScope.overwrite_default_scope('mmdet'):
            torch.manual_seed(0)
            wrapper = MODELS.build(row_backbone(copy.deepcopy(cfg.model.backbone), row))
            wrapper.init_weights()
        wrapper.train()
        modules = dict(wrapper.backbone.named_modules())
        shapes, handles = {}, []
        for name in wrapper.block_layouts:

            def hook(module, args, output, name=name, shapes=shapes):
                shapes[name] = (tuple(args[0].shape), tuple(output.shape))

            handles.append(modules[name].register_forward_hook(hook))
        with torch.no_grad():
            wrapper(torch.randn(batch, 3, img, img))
        for handle in handles:
            handle.remove()
        blocks = []
        for name in wrapper.block_layouts:
            block = modules[name]
            adapter = wrapper.adapters[adapter_key(name)]
            in_shape, out_shape = shapes[name]
            x = torch.randn(in_shape, requires_grad=True)
            y = torch.randn(out_shape, requires_grad=True)
            g = torch.randn(out_shape)

            # (defaults bind this block's tensors: the steps run later, interleaved)
            def block_step(block=block, x=x, g=g, wrapper=wrapper):
                x.grad = None
                with wrapper.disable_adapters():
                    block(x).backward(g)

            def adapter_step(adapter=adapter, y=y, g=g):
                y.grad = None
                adapter.zero_grad(set_to_none=True)
                adapter(y).backward(g)

            fns[(row, name, 'block')] = block_step
            fns[(row, name, 'adapter')] = adapter_step
            blocks.append(
                dict(
                    block=name,
                    stage='.'.join(name.split('.')[:2]),
                    channels=out_shape[1],
                    hw=list(out_shape[2:]),
                    in_channels=in_shape[1],
                    width=adapter_width(adapter),
                )
            )
        pending[row] = blocks
    device = cost.Device('cpu', amp=False, clock=clock)
    times = cost.interleaved_times(fns, repeats, 1, device.timed)
    for row, blocks in pending.items():
        for b in blocks:
            b['block_s'] = statistics.median(times[(row, b['block'], 'block')])
            b['adapter_s'] = statistics.median(times[(row, b['block'], 'adapter')])
            b['ratio'] = b['adapter_s'] / b['block_s']
            log(
                f'[blocks {row}] {b["block"]}: C {b["channels"]}, {b["hw"][0]}x{b["hw"][1]}, '
                f'D {b["width"]}: block {1e3 * b["block_s"]:.1f} ms, '
                f'adapter {1e3 * b["adapter_s"]:.1f} ms'
            )
        stages = {}
        for b in blocks:
            s = stages.setdefault(b['stage'], dict(blocks=0, block_s=0.0, adapter_s=0.0))
            s['blocks'] += 1
            s['block_s'] += b['block_s']
            s['adapter_s'] += b['adapter_s']
        for s in stages.values():
            s['ratio'] = s['adapter_s'] / s['block_s']
        out[row] = dict(
            blocks=blocks,
            stages=stages,
            total_block_s=sum(b['block_s'] for b in blocks),
            total_adapter_s=sum(b['adapter_s'] for b in blocks),
        )
    return out


def blocks_markdown(profile: dict, header: List[str]) -> List[str]:
    lines = (
        ['# Per-block cost of MSLoRA in the detector\'s backbone', '']
        + header
        + [
            '',
            'Forward + backward, median over interleaved rounds: the frozen block (input requires '
            'grad, block parameters frozen, adapters off) and its adapter (on a tensor of the '
            'block\'s output shape). C, H x W: the block\'s output; D: the adapter width.',
            '',
        ]
    )
    for row, p in profile.items():
        lines += [
            f'## {row}',
            '',
            '| block | C | H x W | D | block (ms) | adapter (ms) | adapter / block |',
            '|---|---:|---:|---:|---:|---:|---:|',
        ]
        for b in p['blocks']:
            lines.append(
                f'| {b["block"]} | {b["channels"]} | {b["hw"][0]} x {b["hw"][1]} '
                f'| {b["width"]} | {1e3 * b["block_s"]:.2f} '
                f'| {1e3 * b["adapter_s"]:.2f} | {b["ratio"]:.2f} |'
            )
        lines += [
            '',
            '| stage | blocks | block sum (ms) | adapter sum (ms) | adapter / block |',
            '|---|---:|---:|---:|---:|',
        ]
        for stage, s in p['stages'].items():
            lines.append(
                f'| {stage} | {s["blocks"]} | {1e3 * s["block_s"]:.2f} '
                f'| {1e3 * s["adapter_s"]:.2f} | {s["ratio"]:.2f} |'
            )
        first3 = sum(b['adapter_s'] for b in p['blocks'][:3])
        rest = p['total_adapter_s'] - first3
        lines += [
            f'| all | {len(p["blocks"])} | {1e3 * p["total_block_s"]:.2f} '
            f'| {1e3 * p["total_adapter_s"]:.2f} '
            f'| {p["total_adapter_s"] / p["total_block_s"]:.2f} |',
            '',
            f'First three adapters: {1e3 * first3:.2f} ms; all the others: {1e3 * rest:.2f} ms.',
            '',
        ]
    return lines


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--methods',
        nargs='+',
        default=None,
        choices=ALL_ROWS,
        help=f'rows to measure (default: all, {ALL_ROWS}); full is added as the reference',
    )
    parser.add_argument('--rounds', type=int, default=None, help='timed rounds (5)')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up rounds (2)')
    parser.add_argument('--img', type=int, default=None, help='Resize scale in px (400)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument(
        '--clock',
        choices=('wall', 'cpu'),
        default='wall',
        help='iteration times as wall time (default) or this process\'s CPU '
        'time (with --threads 1: robust to other jobs on a shared machine)',
    )
    parser.add_argument(
        '--compile', action='store_true', help='add every row compiled (backbone fullgraph, neck)'
    )
    parser.add_argument('--quick', action='store_true', help='img 256, 2 rounds, 1 warm-up')
    parser.add_argument(
        '--profile-blocks', action='store_true', help='only the per-block profile (blocks.md)'
    )
    parser.add_argument(
        '--no-blocks',
        action='store_true',
        help='skip the per-block profile after the detector table',
    )
    parser.add_argument(
        '--block-repeats', type=int, default=7, help='interleaved rounds of the per-block profile'
    )
    parser.add_argument(
        '--block-threads',
        type=int,
        default=1,
        help='torch threads of the per-block profile (0: as the run)',
    )
    parser.add_argument(
        '--block-clock',
        choices=('cpu', 'wall'),
        default='cpu',
        help='per-block times: process CPU time (default) or wall time',
    )
    parser.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results', 'detector'))
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.img = args.img if args.img is not None else (256 if quick else 400)
    return args


def main(argv=None) -> dict:
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every tensor
    try:
        return run(parse_args(argv), argv)
    finally:
        logger.setLevel(level)


def run(args, argv=None) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    command = 'python benchmarks/detector_cost.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    cfg = load_config(args.img, args.batch)
    meta = dict(
        command=command,
        date=started.strftime('%Y-%m-%d %H:%M UTC'),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
        machine=platform.machine(),
        commit=git_commit(),
        img=args.img,
        batch=args.batch,
        rounds=args.rounds,
        warmup=args.warmup,
        clock=args.clock,
        config=CONFIG,
    )
    header = [
        f'Command: `{command}`',
        '',
        f'Date: {meta["date"]}; mmslora commit {meta["commit"]}; torch {meta["torch"]}, '
        f'{meta["threads"]} threads, {meta["cpus"]} CPUs.',
        '',
        f'Detector: `{CONFIG}`; images resized to {args.img} px, batch {args.batch} '
        f'(real nuclei tiles).',
    ]
    result = dict(meta=meta)
    if not args.profile_blocks:
        rows = args.methods or ALL_ROWS
        rows = ['full'] + [r for r in rows if r != 'full']
        if args.compile:
            rows = cost.with_compiled_rows(rows)
        with tempfile.TemporaryDirectory(prefix='nuclei_') as tmp:
            run_converter('nuclei', tmp, verbose=False)
            batch = fixed_batch(cfg, tmp)
        shapes = [tuple(t.shape) for t in batch['inputs']]
        meter = CpuMeter()
        results = measure(cfg, batch, rows, args.rounds, args.warmup, args.clock)
        others = meter.others()
        meta.update(input_shapes=shapes, cpu_others=others)
        targets = target_lines(results)
        result.update(rows=results, targets=targets)
        load = f'{others:.2f} CPUs' if others is not None else 'unknown'
        md = ['# Whole-detector training cost: Mask R-CNN, EfficientNet-Lite0, nuclei', '']
        md += (
            header
            + [
                '',
                f'Fixed batch of {args.batch} real images, shapes {shapes} (C, H, W, uint8, '
                f'before padding); {args.warmup} warm-up + {args.rounds} interleaved rounds; '
                f'times are {"wall time" if args.clock == "wall" else "the process CPU time"}; '
                f'CPU used by other processes while measuring: {load}.',
                '',
                'Iteration = data_preprocessor + loss + backward + AdamW step. "x full": paired '
                'ratio (median over rounds) to full fine-tuning; `+compile` rows against '
                '`full+compile` (backbone `compile(fullgraph=True)`, neck `compile()`, heads '
                'eager). Peak = persistent (parameters, buffers, AdamW state) + the highest '
                'rise of live bytes during one iteration.',
                '',
            ]
            + table(results)
            + ['']
            + [f'- {line}' for line in targets]
            + ['']
        )
        compiled = {
            r: v['first_iteration_s'] for r, v in results.items() if 'first_iteration_s' in v
        }
        if compiled:
            md += [
                'First (compiling) iteration, s: '
                + ', '.join(f'{r} {s:.1f}' for r, s in compiled.items()),
                '',
            ]
        with open(osp.join(args.out, 'detector_cost.md'), 'w') as f:
            f.write('\n'.join(md))
        with open(osp.join(args.out, 'detector_cost.json'), 'w') as f:
            json.dump(result, f, indent=1)
        print('\n'.join(md), flush=True)
    if args.profile_blocks or not args.no_blocks:
        meter = CpuMeter()
        profile = profile_blocks(
            cfg,
            args.img,
            args.batch,
            args.block_repeats,
            threads=args.block_threads or None,
            clock=args.block_clock,
        )
        others = meter.others()
        load = f'{others:.2f} CPUs' if others is not None else 'unknown'
        clock = 'the process CPU time' if args.block_clock == 'cpu' else 'wall time'
        md = blocks_markdown(
            profile,
            header
            + [
                '',
                f'CPU used by other processes while profiling: {load}; '
                f'{args.block_repeats} interleaved rounds after one warm-up; times are '
                f'{clock} at '
                f'{args.block_threads or meta["threads"]} torch thread(s).',
            ],
        )
        with open(osp.join(args.out, 'blocks.md'), 'w') as f:
            f.write('\n'.join(md))
        with open(osp.join(args.out, 'blocks.json'), 'w') as f:
            json.dump(
                dict(
                    meta=meta,
                    cpu_others=others,
                    block_threads=args.block_threads,
                    block_clock=args.block_clock,
                    block_repeats=args.block_repeats,
                    profile=profile,
                ),
                f,
                indent=1,
            )
        print('\n'.join(md), flush=True)
        result['blocks'] = profile
    return result


if __name__ == '__main__':
    main()
