"""Training and inference cost of MSLoRA and its peers, on R-50, Swin-T and ViT-B.

Measured in one process, for every method of ``mmslora.models.peers.METHODS`` wrapped
around the same backbone config (random initialisation):

* trainable parameters, and their share of the backbone (``count_parameters``);
* training step time: ``zero_grad`` + forward + backward + ``SGD(momentum=0.9).step``
  on the backbone outputs with ``loss = sum of squares of every output``; as a ratio
  to full fine-tuning of the same backbone. A linear probe has nothing to
  differentiate in the backbone, so its step is the forward alone (no graph);
* peak training memory: the bytes live at the start of a step (parameters, buffers,
  optimizer state; gradients are set to None) plus the highest point that the CPU
  allocator's live bytes reach above it during one step, read from the allocation and
  free events that ``torch.profiler`` records with ``profile_memory=True`` (activations,
  gradients, temporaries, all together); as a ratio to full fine-tuning. Also the
  bytes of the tensors autograd saves for backward (``saved_tensors_hooks``, each
  storage once, parameters left out);
* inference latency: ``eval()`` and ``torch.no_grad()``, as a ratio to the plain
  (unwrapped, frozen) backbone.

Every method with a frozen backbone runs twice: with the frozen fast path of
``MSLoRABackbone`` (the default: frozen layers keep no inputs for backward, BNs folded
into their convolutions, ReLU masks; ``mmslora.models.frozen_path``) and, as
``<method>/off``, with ``fast_path=False`` (the layers' own forwards), so the table shows
what the fast path buys (``--fast-path on`` or ``off`` measures one of them).

``--compile`` adds every row compiled (``torch.compile``, inductor, ``fullgraph=True``,
so a graph break stops the run) as ``<row>+compile``, measured in the same rounds and
set against compiled full fine-tuning and the compiled plain backbone.

On a GPU (``--device cuda``): bf16 autocast around the forward, CUDA-event timing,
``torch.cuda.max_memory_allocated`` over the step for the peak, batch 32 at 224 px,
10 rounds; the whole table in about 2-4 minutes on one recent GPU.

Timings interleave the methods (the order rotates every round) after warm-up steps;
times are medians over rounds, and a time ratio is the median over rounds of the ratio
of two times measured in the same round (load from other processes cancels better).
The CPU time that other processes used meanwhile is measured (``/proc/stat``) and
reported: on a shared machine, read the ratios with it. Results go to ``--out``:
``cost.md``, ``cost.json`` and ``cost.png`` (and ``profile_mslora.md`` with
``--profile``).

Usage::

    .venv/bin/python benchmarks/cost.py            # batch 2 at 224 x 224
    .venv/bin/python benchmarks/cost.py --quick    # batch 1 at 128 x 128, fewer rounds
    .venv/bin/python benchmarks/cost.py --threads 1 --profile
    .venv/bin/python benchmarks/cost.py --compile --fast-path on --methods mslora bitfit
    python benchmarks/cost.py --device cuda --out benchmarks/results/gpu
"""

import argparse
import contextlib
import copy
import datetime
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench import ROOT  # noqa: E402,F401  (puts the repository on sys.path)
from bench.env import CpuMeter, cpu_name  # noqa: E402,F401  (CpuMeter: also detector_cost.py)
from bench.memory import event_start, step_peak_bytes, tensor_bytes  # noqa: E402,F401

from mmslora.compat.mmcv import python_drop_probs  # noqa: E402
from mmslora.models import count_parameters  # noqa: E402
from mmslora.models.peers import METHODS, wrapper_cfg  # noqa: E402

TARGETS = dict(train=0.75, memory=0.5, inference=1.10)  # MSLoRA's, vs full FT / plain
#: MSLoRA's targets compiled, vs compiled full FT / compiled plain; peak memory: no
#: worse than MSLoRA's eager peak
COMPILED_TARGETS = {
    'R-50': dict(train=0.8, inference=1.15),
    'Swin-T': dict(train=0.8),
    'ViT-B': dict(train=0.75),
}
# measured besides METHODS: name -> (method, wrapper_kwargs overrides)
VARIANTS = {'mslora_cp': ('mslora', dict(adapter=dict(with_cp=True)))}
#: suffix of the rows measured with the frozen fast path off
OFF = '/off'
#: suffix of the rows measured compiled (``torch.compile``, inductor, ``fullgraph=True``)
COMPILED = '+compile'


def split_compiled(row: str) -> tuple:
    """``('mslora', '+compile')`` for ``'mslora+compile'``, ``('mslora', '')`` else."""
    return (row[: -len(COMPILED)], COMPILED) if row.endswith(COMPILED) else (row, '')


def method_cfg(method: str, backbone: dict) -> dict:
    """The wrapper config of a method of METHODS or of VARIANTS, ``<method>/off``
    without the frozen fast path (a ``+compile`` suffix is ignored)."""
    method = split_compiled(method)[0]
    name = method[: -len(OFF)] if method.endswith(OFF) else method
    if name in VARIANTS:
        base, overrides = VARIANTS[name]
        cfg = wrapper_cfg(base, backbone, **overrides)
    else:
        cfg = wrapper_cfg(name, backbone)
    if method.endswith(OFF):
        cfg['fast_path'] = False
    return cfg


def with_fast_path_rows(methods: List[str], mode: str) -> List[str]:
    """``methods`` with the fast path ``'on'`` (as given), ``'off'`` (every frozen
    method as ``<method>/off``) or ``'both'`` (each frozen method followed by its
    ``/off`` row). Full fine-tuning has no frozen layers: it stays as it is."""
    rows = []
    for method in methods:
        if method == 'full' or mode == 'on':
            rows.append(method)
        elif mode == 'off':
            rows.append(method + OFF)
        else:
            rows += [method, method + OFF]
    return rows


def with_compiled_rows(methods: List[str]) -> List[str]:
    """Each row of ``methods`` followed by its compiled twin ``<row>+compile``."""
    return [row for method in methods for row in (method, method + COMPILED)]


def maybe_compiled(model: nn.Module, row: str) -> nn.Module:
    """``model`` compiled (inductor, ``fullgraph=True``: a graph break raises) for a
    ``+compile`` row, else ``model``."""
    return torch.compile(model, fullgraph=True) if split_compiled(row)[1] else model


class Device:
    """Where the benchmark runs: CPU (float32, wall-clock, profiler memory events) or
    CUDA (bf16 autocast, CUDA events, ``max_memory_allocated``)."""

    def __init__(self, name: str, amp: bool, clock: str = 'wall') -> None:
        self.name = name
        self.cuda = name.startswith('cuda')
        self.amp = amp
        self.clock = time.process_time if clock == 'cpu' else time.perf_counter

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast('cuda' if self.cuda else 'cpu', dtype=torch.bfloat16)

    def timed(self, fn: Callable[[], None]) -> float:
        if not self.cuda:
            start = self.clock()
            fn()
            return self.clock() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    def step_peak_bytes(self, fn: Callable[[], None]) -> int:
        """Highest rise of allocated memory during ``fn()`` above its start."""
        if not self.cuda:
            return step_peak_bytes(fn)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def backbone_configs(img: int) -> Dict[str, tuple]:
    """name -> (toolbox scope, backbone config)."""
    return {
        'R-50': ('mmdet', dict(type='mmdet.ResNet', depth=50, init_cfg=None)),
        'Swin-T': ('mmdet', dict(type='mmdet.SwinTransformer', init_cfg=None)),
        'ViT-B': (
            'mmpretrain',
            dict(
                type='mmpretrain.VisionTransformer',
                arch='b',
                img_size=img,
                patch_size=16,
                init_cfg=None,
            ),
        ),
    }


def build(scope: str, cfg: dict) -> nn.Module:
    from mmengine.registry import DefaultScope

    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(copy.deepcopy(cfg))


def flat(outputs) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat(item)]


class Trainer:
    """One method's model, optimizer and training step."""

    def __init__(self, model: nn.Module, x: torch.Tensor, device: Device) -> None:
        self.model = model
        model.train()
        self.x = x
        self.device = device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=1e-6, momentum=0.9) if self.params else None

    def step(self) -> None:
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
            with self.device.autocast():
                loss = sum(t.float().pow(2).sum() for t in flat(self.model(self.x)))
            loss.backward()
            self.opt.step()
        else:  # linear probe: the backbone is a fixed feature extractor
            with torch.no_grad(), self.device.autocast():
                self.model(self.x)

    def persistent_bytes(self) -> int:
        state = [
            v
            for s in (self.opt.state.values() if self.opt else [])
            for v in s.values()
            if isinstance(v, torch.Tensor)
        ]
        return (
            tensor_bytes(self.model.parameters())
            + tensor_bytes(self.model.buffers())
            + tensor_bytes(state)
        )


def saved_activation_bytes(trainer: Trainer) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (each storage
    once, parameters and buffers left out)."""
    if trainer.opt is None:
        return 0
    own = {
        t.untyped_storage().data_ptr()
        for t in list(trainer.model.parameters()) + list(trainer.model.buffers())
    }
    seen: Dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), trainer.device.autocast():
        loss = sum(t.float().pow(2).sum() for t in flat(trainer.model(trainer.x)))
    del loss
    return sum(seen.values())


def interleaved_times(
    fns: Dict[str, Callable[[], None]],
    rounds: int,
    warmup: int,
    timed: Callable[[Callable[[], None]], float],
) -> Dict[str, List[float]]:
    """Seconds of each call, ``rounds`` per function, the order rotating each round
    so that every function runs early and late as often."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(fns[name]))
    return times


def paired_ratio(times: Dict[str, List[float]], name: str, reference: str) -> float:
    """Median over rounds of ``time(name) / time(reference)`` in the same round (the
    two ran close in time, so load from other processes cancels better)."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def measure_backbone(
    name: str,
    scope: str,
    cfg: dict,
    methods: List[str],
    batch: int,
    img: int,
    rounds: int,
    warmup: int,
    log,
    infer_rounds: Optional[int] = None,
    device: Optional[Device] = None,
) -> dict:
    device = device or Device('cpu', amp=False)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, img, img).to(device.name)
    plain = build(scope, cfg).to(device.name)
    plain.eval()  # (mmdet's ResNet.train returns None: no chaining)
    plain.requires_grad_(False)
    python_drop_probs(plain)  # as the wrapper does: NumPy drop-path rates break the graph
    plains = {
        'plain' + suffix: maybe_compiled(plain, suffix)
        for suffix in sorted({split_compiled(m)[1] for m in methods})
    }
    models, rows = {}, {}
    for method in methods:
        torch.manual_seed(0)
        model = build(scope, method_cfg(method, cfg)).to(device.name)
        report = count_parameters(model)
        rows[method] = dict(
            trainable=report.backbone_trainable,
            backbone=report.backbone,
            share=report.backbone_share,
        )
        models[method] = maybe_compiled(model, method)
    log(
        f'[{name}] built {len(models)} models; '
        f'{rows[methods[0]]["backbone"] / 1e6:.1f}M backbone parameters'
    )

    # training step time
    trainers = {m: Trainer(model, x, device) for m, model in models.items()}
    step_times = interleaved_times(
        {m: t.step for m, t in trainers.items()}, rounds, warmup, device.timed
    )
    log(
        f'[{name}] train step (s): '
        + ', '.join(f'{m} {statistics.median(v):.3f}' for m, v in step_times.items())
    )

    # peak training memory (after warm-up, so optimizer state exists)
    for method, trainer in trainers.items():
        trainer.step()
        if trainer.opt is not None:
            trainer.opt.zero_grad(set_to_none=True)
        persistent = trainer.persistent_bytes()
        peak = persistent + device.step_peak_bytes(trainer.step)
        if trainer.opt is not None:
            trainer.opt.zero_grad(set_to_none=True)
        rows[method].update(
            persistent_mib=persistent / 2**20,
            peak_mib=peak / 2**20,
            saved_mib=saved_activation_bytes(trainer) / 2**20,
        )
    log(
        f'[{name}] peak memory (MiB): '
        + ', '.join(f'{m} {rows[m]["peak_mib"]:.0f}' for m in methods)
    )

    # inference latency
    for model in models.values():
        model.eval()

    def infer(model):
        def run():
            with torch.no_grad(), device.autocast():
                model(x)

        return run

    infer_fns = {
        **{p: infer(model) for p, model in plains.items()},
        **{m: infer(model) for m, model in models.items()},
    }
    infer_times = interleaved_times(infer_fns, infer_rounds or rounds, warmup, device.timed)
    log(
        f'[{name}] inference (s): '
        + ', '.join(f'{m} {statistics.median(v):.3f}' for m, v in infer_times.items())
    )

    for method in methods:
        suffix = split_compiled(method)[1]  # compiled rows against compiled references
        rows[method].update(
            train_s=statistics.median(step_times[method]),
            infer_s=statistics.median(infer_times[method]),
            train_ratio=paired_ratio(step_times, method, 'full' + suffix),
            memory_ratio=rows[method]['peak_mib'] / rows['full' + suffix]['peak_mib'],
            infer_ratio=paired_ratio(infer_times, method, 'plain' + suffix),
        )
    return dict(
        rows=rows,
        plain_infer_s=statistics.median(infer_times['plain']),
        **{
            f'plain{COMPILED}_infer_s': statistics.median(infer_times[p])
            for p in plains
            if p != 'plain'
        },
    )


# ------------------------------------------------------------------ profile
def profile_mslora(
    configs: dict, names: List[str], batch: int, img: int, out: str, log, rows=('mslora', 'full')
) -> None:
    """Top operators (self CPU time) of one training step and one inference of the
    MSLoRA-wrapped and the fully fine-tuned backbone, written to profile_mslora.md."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    x = torch.randn(batch, 3, img, img)
    lines = [
        '# Where the time goes: MSLoRA vs full fine-tuning',
        '',
        f'batch {batch} x 3 x {img} x {img}, {torch.get_num_threads()} torch threads; '
        'one step after two warm-up steps; top operators by self CPU time '
        '(torch.profiler, input shapes grouped). Command: `python benchmarks/cost.py '
        + ' '.join(sys.argv[1:])
        + '`.',
        '',
    ]
    for name in names:
        scope, cfg = configs[name]
        for method in rows:
            model = maybe_compiled(build(scope, method_cfg(method, cfg)), method)
            trainer = Trainer(model, x, Device('cpu', False))
            for _ in range(2):
                trainer.step()
            for mode in ('train step', 'inference'):
                if mode == 'inference':
                    trainer.model.eval()

                    def run(model=trainer.model):
                        with torch.no_grad():
                            model(x)
                else:
                    run = trainer.step
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    run()
                table = prof.key_averages(group_by_input_shape=True).table(
                    sort_by='self_cpu_time_total',
                    row_limit=15,
                    max_name_column_width=36,
                    max_shapes_column_width=64,
                )
                lines += [f'## {name}, {method}, {mode}', '', '```', table, '```', '']
                log(f'[profile] {name} {method} {mode} done')
    with open(osp.join(out, 'profile_mslora.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


# ------------------------------------------------------------------- output
def markdown(results: dict, meta: dict) -> str:
    lines = [
        '# Cost of MSLoRA and its peers',
        '',
        f"Command: `{meta['command']}`  ",
        f"Input: batch {meta['batch']} x 3 x {meta['img']} x {meta['img']}, "
        f"{meta.get('precision', 'float32')}, {meta.get('device_name') or 'CPU'} "
        f"({meta['cpu']}, {meta['cpus']} cores, {meta['threads']} torch threads), "
        f"torch {meta['torch']}, times by {meta.get('clock', 'wall clock')}, "
        f"{meta['rounds']} interleaved training rounds and "
        f"{meta.get('infer_rounds', meta['rounds'])} inference rounds after "
        f"{meta['warmup']} warm-up; times are medians over rounds, time ratios the median "
        f"over rounds of the ratio within a round.  ",
        "Other processes on the machine used on average "
        + ', '.join(f'{v:.2f} CPUs during {k}' for k, v in meta['others_cpus'].items())
        + f" (load average {meta['loadavg']} at start, {meta['loadavg_end']} at end).  ",
        f"Date: {meta['date']}. Random initialisation.",
        '',
        'train = zero_grad + forward + backward + SGD(momentum 0.9) step, loss = sum of '
        'squares of the backbone outputs (linear probe: forward only, no graph); '
        'peak = parameters + buffers + optimizer state + the highest rise of the CPU '
        "allocator's live bytes during one step (torch.profiler memory events); "
        'saved = tensors autograd keeps for backward (parameters excluded); '
        'inference = eval + no_grad forward. Ratios: train and peak vs full fine-tuning, '
        'inference vs the plain backbone; rows `<row>+compile` run `torch.compile` '
        '(inductor, fullgraph=True, first calls in the warm-up) and are measured against '
        'compiled full fine-tuning and the compiled plain backbone.',
        '',
        f"MSLoRA targets: train <= {TARGETS['train']}x, peak <= {TARGETS['memory']}x, "
        f"inference <= {TARGETS['inference']}x. `<method>{OFF}` is the method with the "
        "frozen fast path off (`fast_path=False`: every frozen layer keeps its input for "
        "backward, BNs are not folded). `mslora_cp` is MSLoRA with "
        "`with_cp=True` (gradient checkpointing of each adapter); at inference it runs "
        "the same code as `mslora`, so the difference of their inference ratios, like "
        "that of full / linear probe / BitFit from 1.00, shows the measurement noise.",
        '',
    ]
    for name, result in results.items():
        lines += [
            f'## {name}',
            '',
            '| method | trainable | share | train (s) | train / full | peak (MiB) | '
            'peak / full | saved (MiB) | infer (s) | infer / plain |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        ]
        for method, row in result['rows'].items():
            lines.append(
                f"| {method} | {row['trainable']:,d} | {100 * row['share']:.2f}% | "
                f"{row['train_s']:.3f} | {row['train_ratio']:.2f} | {row['peak_mib']:.0f} | "
                f"{row['memory_ratio']:.2f} | {row['saved_mib']:.0f} | {row['infer_s']:.3f} | "
                f"{row['infer_ratio']:.2f} |"
            )
        lines.append(
            f"\nplain backbone inference: {result['plain_infer_s']:.3f} s"
            + (
                f" (compiled: {result['plain' + COMPILED + '_infer_s']:.3f} s)"
                if 'plain' + COMPILED + '_infer_s' in result
                else ''
            )
            + '\n'
        )
        for method in ('mslora', 'mslora' + OFF, 'mslora_cp'):
            if method not in result['rows']:
                continue
            row = result['rows'][method]
            checks = [
                ('train', row['train_ratio'], TARGETS['train']),
                ('peak memory', row['memory_ratio'], TARGETS['memory']),
                ('inference', row['infer_ratio'], TARGETS['inference']),
            ]
            lines.append(
                f'{method}: '
                + '; '.join(
                    f"{what} {value:.2f}x ({'meets' if value <= target else 'MISSES'} <= {target}x)"
                    for what, value, target in checks
                )
                + '  '
            )
        lines += compiled_checks(name, result['rows'])
        lines.append('')
    return '\n'.join(lines)


def compiled_checks(name: str, rows: dict) -> List[str]:
    """The summary line of compiled MSLoRA against :data:`COMPILED_TARGETS`."""
    row, eager = rows.get('mslora' + COMPILED), rows.get('mslora')
    if row is None:
        return []
    targets = COMPILED_TARGETS.get(name, {})
    checks = [
        (what, row[key], targets[what])
        for what, key in (('train', 'train_ratio'), ('inference', 'infer_ratio'))
        if what in targets
    ]
    parts = [
        f"{what} {value:.2f}x ({'meets' if value <= target else 'MISSES'} <= {target}x)"
        for what, value, target in checks
    ]
    if eager is not None:
        worse = row['peak_mib'] > eager['peak_mib']
        parts.append(
            f"peak {row['peak_mib']:.0f} MiB vs eager {eager['peak_mib']:.0f} MiB "
            f"({'MISSES' if worse else 'meets'} no worse than eager)"
        )
    return [f'mslora{COMPILED} (vs compiled full / plain): ' + '; '.join(parts) + '  ']


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = [
        ('share', 'trainable / backbone (%)', None, 100),
        ('train_ratio', 'train step / full FT', TARGETS['train'], 1),
        ('memory_ratio', 'peak train memory / full FT', TARGETS['memory'], 1),
        ('infer_ratio', 'inference / plain', TARGETS['inference'], 1),
    ]
    names = list(results)
    methods = list(next(iter(results.values()))['rows'])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.8 / len(methods)
    for ax, (key, title, target, factor) in zip(axes, panels):
        for i, method in enumerate(methods):
            values = [results[n]['rows'][method][key] * factor for n in names]
            ax.bar(
                [j + (i - len(methods) / 2 + 0.5) * width for j in range(len(names))],
                values,
                width,
                label=method,
            )
        if target:
            ax.axhline(target, color='k', ls='--', lw=1, label='MSLoRA target')
        if key == 'share':
            ax.set_yscale('log')
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--quick', action='store_true', help='batch 1 at 128 x 128, 3 rounds, 1 warm-up'
    )
    parser.add_argument('--batch', type=int)
    parser.add_argument('--img', type=int)
    parser.add_argument('--rounds', type=int)
    parser.add_argument(
        '--infer-rounds',
        type=int,
        help='rounds of the inference timing (default 3x --rounds: it is '
        'cheap, and its ratios are the closest to 1)',
    )
    parser.add_argument('--warmup', type=int)
    parser.add_argument('--models', nargs='+', default=['R-50', 'Swin-T', 'ViT-B'])
    parser.add_argument(
        '--methods',
        nargs='+',
        default=list(METHODS) + list(VARIANTS),
        choices=list(METHODS) + list(VARIANTS),
    )
    parser.add_argument(
        '--fast-path',
        choices=('both', 'on', 'off'),
        default='both',
        help='measure the frozen methods with the frozen fast path on, '
        f'off (as <method>{OFF}), or both (default)',
    )
    parser.add_argument(
        '--device',
        default='cpu',
        help="'cpu' (default) or 'cuda': bf16 autocast, CUDA-event timing, "
        'max_memory_allocated, batch 32, 10 rounds',
    )
    parser.add_argument(
        '--no-amp', action='store_true', help='on cuda: float32 instead of bf16 autocast'
    )
    parser.add_argument(
        '--clock',
        choices=('wall', 'cpu'),
        default='wall',
        help="CPU timings: wall-clock (default; an idle machine) or this "
        "process's CPU time ('cpu': with --threads 1 on a busy machine, "
        'where waiting for a core would count as wall time)',
    )
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also measure every row compiled (torch.compile, inductor, '
        f'fullgraph=True) as <row>{COMPILED}, against compiled full '
        'fine-tuning and the compiled plain backbone',
    )
    parser.add_argument(
        '--profile',
        action='store_true',
        help='also profile one MSLoRA train step and inference per model '
        '(torch.profiler, top operators) into profile_mslora.md',
    )
    parser.add_argument(
        '--profile-only', action='store_true', help='write profile_mslora.md only (no cost tables)'
    )
    args = parser.parse_args()
    device = Device(
        args.device, amp=args.device.startswith('cuda') and not args.no_amp, clock=args.clock
    )
    if device.cuda and not torch.cuda.is_available():
        raise SystemExit(
            f'--device {args.device}: torch {torch.__version__} sees no CUDA '
            'device here; run on a GPU machine or use --device cpu.'
        )
    batch = args.batch or (1 if args.quick else 32 if device.cuda else 2)
    img = args.img or (128 if args.quick else 224)
    rounds = args.rounds or (3 if args.quick else 10 if device.cuda else 5)
    warmup = (
        args.warmup if args.warmup is not None else (1 if args.quick else 3 if device.cuda else 2)
    )
    infer_rounds = args.infer_rounds or 3 * rounds
    methods = args.methods
    if 'full' not in methods:
        methods = ['full'] + methods  # the reference of the ratios
    methods = with_fast_path_rows(methods, args.fast_path)
    if args.compile:
        methods = with_compiled_rows(methods)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    configs = backbone_configs(img)

    def log(message):
        print(message, flush=True)

    meta = dict(
        command=' '.join(['python', 'benchmarks/cost.py'] + sys.argv[1:]),
        batch=batch,
        img=img,
        rounds=rounds,
        infer_rounds=infer_rounds,
        warmup=warmup,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cpu=cpu_name(),
        loadavg=' '.join(f'{v:.2f}' for v in os.getloadavg()),
        date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
        precision='bf16 autocast' if device.amp else 'float32',
        clock='CUDA events'
        if device.cuda
        else ('process CPU time' if args.clock == 'cpu' else 'wall clock'),
        device_name=torch.cuda.get_device_name() if device.cuda else None,
    )
    profiled = with_compiled_rows(['mslora', 'full']) if args.compile else ['mslora', 'full']
    if args.profile_only:
        os.makedirs(args.out, exist_ok=True)
        profile_mslora(configs, args.models, batch, img, args.out, log, profiled)
        return
    meta['cpus'] = os.cpu_count()
    meta['others_cpus'] = {}
    results = {}
    for name in args.models:
        scope, cfg = configs[name]
        meter = CpuMeter()
        results[name] = measure_backbone(
            name, scope, cfg, methods, batch, img, rounds, warmup, log, infer_rounds, device
        )
        others = meter.others()
        if others is not None:
            meta['others_cpus'][name] = others
            log(f'[{name}] other processes used {others:.2f} CPUs meanwhile')
    meta['loadavg_end'] = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    if args.profile:
        profile_mslora(configs, args.models, batch, img, args.out, log, profiled)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'cost.json'), 'w') as f:
        json.dump(dict(meta=meta, targets=TARGETS, results=results), f, indent=2)
    text = markdown(results, meta)
    with open(osp.join(args.out, 'cost.md'), 'w') as f:
        f.write(text + '\n')
    plot(results, osp.join(args.out, 'cost.png'))
    print(text)


if __name__ == '__main__':
    main()
