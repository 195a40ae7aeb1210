"""Graph breaks of ``torch.compile`` in MSLoRABackbone, per backbone and method.

    python tools/analysis_tools/graph_breaks.py [--methods mslora lora ...] [--out FILE.md]

For R-50, Swin-T and ViT-B of each toolbox (full size, random initialisation) and every
method of ``mmslora.models.peers.METHODS``, it wraps the backbone, puts it in training
mode and traces one forward of a 224 x 224 image with ``torch._dynamo.explain`` (what
``torch.compile`` sees, without compiling): the number of graphs and of graph breaks,
and where a break is, its reason and the code that caused it. Zero breaks means
``torch.compile(model, fullgraph=True)`` traces the forward as one graph.
``tests/test_models/test_compile.py`` compiles small versions end to end.
"""

import argparse
import datetime
import time

import torch
import torch._dynamo as dynamo

import mmslora  # noqa: F401  (registers mmslora.*)
from mmslora.models.peers import METHODS, wrapper_cfg
from mmslora.registry import MODELS

BACKBONES = {
    'mmdet ResNet-50': dict(type='mmdet.ResNet', depth=50, init_cfg=None),
    'mmdet Swin-T': dict(type='mmdet.SwinTransformer', init_cfg=None),
    'mmseg ResNetV1c-50': dict(type='mmseg.ResNetV1c', depth=50, init_cfg=None),
    'mmseg Swin-T': dict(type='mmseg.SwinTransformer', init_cfg=None),
    'mmseg ViT-B': dict(type='mmseg.VisionTransformer', img_size=(224, 224), init_cfg=None),
    'mmpretrain ResNet-50': dict(type='mmpretrain.ResNet', depth=50, init_cfg=None),
    'mmpretrain Swin-T': dict(
        type='mmpretrain.SwinTransformer', arch='tiny', img_size=224, init_cfg=None
    ),
    'mmpretrain ViT-B': dict(
        type='mmpretrain.VisionTransformer', arch='b', img_size=224, init_cfg=None
    ),
}


def count_breaks(backbone: dict, method: str) -> dict:
    """Graphs, breaks and break reasons of one training-mode forward."""
    model = MODELS.build(wrapper_cfg(method, backbone))
    model.train()
    dynamo.reset()
    explained = dynamo.explain(model)(torch.randn(1, 3, 224, 224))
    reasons = sorted(
        {
            f'{str(b.reason).splitlines()[0]} at '
            + (
                f'{b.user_stack[-1].filename.split("site-packages/")[-1]}:{b.user_stack[-1].lineno}'
                if b.user_stack
                else '?'
            )
            for b in explained.break_reasons
        }
    )
    return dict(graphs=explained.graph_count, breaks=explained.graph_break_count, reasons=reasons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument('--out', help='write the markdown table here too')
    args = parser.parse_args()
    lines = [
        '| backbone | ' + ' | '.join(args.methods) + ' |',
        '|---|' + '---:|' * len(args.methods),
    ]
    reasons = []
    start = time.time()
    for name in args.backbones:
        cells = []
        for method in args.methods:
            result = count_breaks(BACKBONES[name], method)
            cells.append(str(result['breaks']))
            reasons += [f'- {name}, {method}: {r}' for r in result['reasons']]
            print(f'{name} {method}: {result}', flush=True)
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    text = '\n'.join(
        [
            '# Graph breaks of torch.compile in MSLoRABackbone',
            '',
            f'`python tools/analysis_tools/graph_breaks.py`, torch {torch.__version__}, '
            f'{datetime.date.today()} ({time.time() - start:.0f} s): graph breaks in one '
            'training-mode forward (`torch._dynamo.explain`, 224 x 224); 0 is one graph, so '
            '`fullgraph=True` compiles.',
            '',
        ]
        + lines
        + ['']
        + (['Breaks:', ''] + reasons if reasons else ['No break anywhere.'])
    )
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
