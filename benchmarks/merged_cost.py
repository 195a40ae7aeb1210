"""Inference cost of LoRA merged into the backbone, against the plain backbone.

One process, eager, CPU; R-50 by default (``--models`` as in ``cost.py``). Rows, each
an ``eval()`` + ``torch.no_grad()`` forward on the same input, timed in interleaved
rounds (the order rotates every round) by :mod:`cost`'s functions:

* ``plain``: the upstream backbone, unwrapped;
* ``lora``: the LoRA-wrapped backbone (``wrapper_cfg('lora', ...)``, frozen fast path
  on), its update added by the layer hooks;
* ``lora/merged``: the same wrapper after ``merge_adapters()`` (the update is in the
  weights, the hooks add nothing);
* ``lora/exported``: a plain upstream backbone loaded with
  ``mmslora.models.merging.upstream_state_dict`` of the merged wrapper: what
  ``mmslora-merge`` ships.

The LoRA ``B`` matrices are drawn away from zero (a trained LoRA), and the outputs of
the merged and exported rows are checked against the hooked ``lora`` row. Ratios are
medians over rounds of the ratio to ``plain`` in the same round. Results:
``merged_cost.md`` and ``merged_cost.json`` in ``--out``.

Usage::

    .venv/bin/python benchmarks/merged_cost.py --threads 2 --rounds 15
"""

import argparse
import datetime
import json
import os
import os.path as osp
import statistics
import sys

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import cost  # noqa: E402  (puts the repository on sys.path, registers mmslora)

from mmslora.models.merging import upstream_state_dict  # noqa: E402
from mmslora.models.peers import wrapper_cfg  # noqa: E402


def build_rows(scope: str, cfg: dict) -> dict:
    """name -> model in eval mode, for the rows of the module docstring."""
    torch.manual_seed(0)
    plain = cost.build(scope, cfg)
    hooked = cost.build(scope, wrapper_cfg('lora', cfg))
    hooked.backbone.load_state_dict(plain.state_dict())
    for adapter in hooked.adapters.values():
        nn.init.normal_(adapter.lora_B.weight, std=0.02)
    merged = cost.build(scope, wrapper_cfg('lora', cfg))
    merged.load_state_dict(hooked.state_dict())
    merged.merge_adapters()
    exported = cost.build(scope, cfg)
    exported.load_state_dict(upstream_state_dict(merged), strict=True)
    models = {'plain': plain, 'lora': hooked, 'lora/merged': merged, 'lora/exported': exported}
    for model in models.values():
        model.eval()  # (mmdet's ResNet.train returns None: no chaining)
    return models


def max_relative_error(models: dict, x: torch.Tensor) -> dict:
    """Largest ``|out - lora out| / max |lora out|`` over the outputs, per row."""
    with torch.no_grad():
        want = cost.flat(models['lora'](x))
        errors = {}
        for name in ('lora/merged', 'lora/exported'):
            got = cost.flat(models[name](x))
            errors[name] = max(
                float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, want)
            )
    return errors


def measure(name: str, scope: str, cfg: dict, x: torch.Tensor, rounds: int, warmup: int) -> dict:
    models = build_rows(scope, cfg)
    errors = max_relative_error(models, x)

    def infer(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    meter = cost.CpuMeter()
    times = cost.interleaved_times(
        {k: infer(m) for k, m in models.items()},
        rounds,
        warmup,
        cost.Device('cpu', amp=False).timed,
    )
    rows = {
        k: dict(
            infer_s=statistics.median(v),
            infer_ratio=cost.paired_ratio(times, k, 'plain'),
            max_rel_error=errors.get(k),
        )
        for k, v in times.items()
    }
    return dict(rows=rows, others_cpus=meter.others())


def markdown(results: dict, meta: dict) -> str:
    lines = [
        '# Inference cost of LoRA merged into the backbone',
        '',
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['cpu']}, {meta['threads']} torch threads, "
        f"torch {meta['torch']}, eager, float32; input batch {meta['batch']} x 3 x "
        f"{meta['img']} x {meta['img']}; {meta['rounds']} interleaved rounds after "
        f"{meta['warmup']} warm-up; times are medians, ratios the median over rounds "
        f"of the ratio to `plain` in the same round. Random initialisation, LoRA B "
        f"drawn with std 0.02.",
        '',
        '`lora`: hooks add the update; `lora/merged`: `merge_adapters()`; '
        '`lora/exported`: the plain backbone loaded with the merged upstream state '
        'dict (what `mmslora-merge` writes). Error: the largest output difference '
        'to `lora`, relative to its largest output.',
        '',
    ]
    for name, result in results.items():
        lines += [
            f'## {name}',
            '',
            '| row | infer (s) | infer / plain | error vs lora |',
            '|---|---:|---:|---:|',
        ]
        for row, values in result['rows'].items():
            error = values['max_rel_error']
            lines.append(
                f"| {row} | {values['infer_s']:.4f} | {values['infer_ratio']:.2f} | "
                f"{'-' if error is None else f'{error:.1e}'} |"
            )
        if result['others_cpus'] is not None:
            lines.append(f"\nOther processes used {result['others_cpus']:.2f} CPUs meanwhile.")
        lines.append('')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=['R-50'])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default=osp.join(cost.ROOT, 'benchmarks', 'results', 'merged'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    configs = cost.backbone_configs(args.img)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img, args.img)
    results = {}
    for name in args.models:
        results[name] = measure(name, *configs[name], x, args.rounds, args.warmup)
        print(name, json.dumps(results[name]), flush=True)
    meta = dict(
        command=' '.join(['python', 'benchmarks/merged_cost.py'] + sys.argv[1:]),
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        batch=args.batch,
        img=args.img,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        cpu=cost.cpu_name(),
    )
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'merged_cost.json'), 'w') as f:
        json.dump(dict(meta=meta, results=results), f, indent=2)
    text = markdown(results, meta)
    with open(osp.join(args.out, 'merged_cost.md'), 'w') as f:
        f.write(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
