"""Does ``torch.compile`` make MSLoRA's inference cheaper? Eager vs compiled adapters.

For each backbone of ``cost.py`` (random initialisation, ``Proj.up`` set non-zero so
the adapters compute a real product), one process builds the plain backbone and the
MSLoRA-wrapped one, compiles every adapter's ``forward`` (``torch.compile``, inductor,
``dynamic=False``) in a deep copy of the wrapped one, checks that its outputs equal
the eager ones, and times ``no_grad`` inference of the three, interleaved, after
warm-up. Prints and writes (``--out``/``compile_probe.md``) the medians and the
ratios to the plain backbone, measured side by side in this run.

Usage::

    .venv/bin/python benchmarks/compile_probe.py                  # R-50, Swin-T, ViT-B
    .venv/bin/python benchmarks/compile_probe.py --models R-50 --rounds 5
"""
import argparse
import copy
import datetime
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import cost  # noqa: E402  (backbone configs, builders, interleaved timing)

from mmslora.models.adapter import MSLoRAAdapter  # noqa: E402


def probe(name: str, batch: int, img: int, rounds: int) -> dict:
    scope, backbone = cost.backbone_configs(img)[name]
    plain = cost.build(scope, backbone)
    eager = cost.build(scope, cost.method_cfg('mslora', backbone))
    for model in (plain, eager):
        model.eval()  # some mm* backbones' train() returns None: no chaining
    torch.manual_seed(0)
    for module in eager.modules():
        if isinstance(module, MSLoRAAdapter):
            torch.nn.init.normal_(module.proj.up.weight, std=0.02)
    compiled = copy.deepcopy(eager)
    adapters = [m for m in compiled.modules() if isinstance(m, MSLoRAAdapter)]
    for module in adapters:
        module.forward = torch.compile(module.forward, dynamic=False)
    x = torch.randn(batch, 3, img, img)
    with torch.no_grad():
        start = time.time()
        try:
            out_compiled = cost.flat(compiled(x))
        except Exception as e:  # inductor's limits are part of the answer
            reason = str(e).strip().splitlines()
            return dict(adapters=len(adapters), failed=' '.join(reason[:3])[:300])
        compile_s = time.time() - start
        max_err = max((a - b).abs().max().item()
                      for a, b in zip(cost.flat(eager(x)), out_compiled))
        fns = {k: (lambda m=m: m(x))
               for k, m in (('plain', plain), ('eager', eager), ('compiled', compiled))}
        times = cost.interleaved_times(fns, rounds=rounds, warmup=2)
    return dict(adapters=len(adapters), compile_s=compile_s, max_abs_err=max_err,
                ms={k: 1e3 * statistics.median(v) for k, v in times.items()},
                eager_ratio=cost.paired_ratio(times, 'eager', 'plain'),
                compiled_ratio=cost.paired_ratio(times, 'compiled', 'plain'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['R-50', 'Swin-T', 'ViT-B'])
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--img', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default=osp.join(cost.ROOT, 'benchmarks', 'results'))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ['# torch.compile probe: MSLoRA inference, eager vs compiled adapters', '',
             f'Command: `python benchmarks/compile_probe.py {" ".join(sys.argv[1:])}`  ',
             f'Input: batch {args.batch} x 3 x {args.img} x {args.img}, CPU, {args.threads} '
             f'threads, torch {torch.__version__}, {args.rounds} interleaved rounds; '
             f'medians, ratios to the plain backbone paired within rounds.  ',
             f"Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC", '',
             '| backbone | adapters | plain (ms) | eager MSLoRA (ms) | compiled MSLoRA (ms) '
             '| eager / plain | compiled / plain | compile (s) | max abs. diff |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name in args.models:
        r = probe(name, args.batch, args.img, args.rounds)
        if 'failed' in r:
            lines.append(f"| {name} | {r['adapters']} | compile failed: {r['failed']} |")
            print(lines[-1], flush=True)
            continue
        lines.append(f"| {name} | {r['adapters']} | {r['ms']['plain']:.1f} | "
                     f"{r['ms']['eager']:.1f} | {r['ms']['compiled']:.1f} | "
                     f"{r['eager_ratio']:.3f} | {r['compiled_ratio']:.3f} | "
                     f"{r['compile_s']:.0f} | {r['max_abs_err']:.1e} |")
        print(lines[-1], flush=True)
    text = '\n'.join(lines) + '\n'
    with open(osp.join(args.out, 'compile_probe.md'), 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()
