"""Export a trained model to ONNX.

    mmslora-export-onnx CONFIG CHECKPOINT OUT_DIR [--shape H W] [--batch N]
        [--dynamo | --torchscript] [--opset N] [--parts backbone features model]
        [--verify] [--rtol R] [--cfg-options k=v ...]

(also ``python tools/deployment/export_onnx.py ...``; CONFIG is a file or a
``mmslora::`` name). The model is built from CONFIG (no pretrained download) and gets
CHECKPOINT's weights (mmslora's safe loader), then each part is written to
``OUT_DIR/<part>.onnx``: ``backbone`` (the MSLoRABackbone with its adapters),
``features`` (backbone + neck, where there is a neck) and ``model`` (the toolbox's
``'tensor'`` mode: logits, or a detector's raw head outputs), for a fixed input of
(N, C, H, W) preprocessed images (C from the config's data preprocessor, else 3). A
part that cannot be exported is named with the reason. ``--verify`` runs each file in
onnxruntime on the same random input and prints the largest absolute and relative
difference from PyTorch. Exit status 1 where the backbone was not exported or a
verified part differs by more than ``--rtol``.
"""

import argparse
import importlib.util
import sys

import torch
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

import mmslora
from mmslora.compat.torch import dynamo_onnx_unavailable
from mmslora.deployment import PARTS, default_exporter, export_parts
from mmslora.utils.config import build_model_from_config, disable_pretrained, load_config

#: the relative difference from PyTorch that --verify accepts by default
DEFAULT_RTOL = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file or mmslora:: name')
    parser.add_argument('checkpoint', help='the trained checkpoint (.pth)')
    parser.add_argument('out_dir', help='folder for <part>.onnx')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=(224, 224),
        metavar=('H', 'W'),
        help='input height and width (default 224 224)',
    )
    parser.add_argument('--batch', type=int, default=1, help='input batch size (default 1)')
    exporters = parser.add_mutually_exclusive_group()
    exporters.add_argument(
        '--dynamo',
        dest='exporter',
        action='store_const',
        const='dynamo',
        help='the torch.export-based exporter (default where torch has '
        'it: torch >= 2.5 with onnxscript)',
    )
    exporters.add_argument(
        '--torchscript',
        dest='exporter',
        action='store_const',
        const='torchscript',
        help='the TorchScript-based exporter (the one MMDeploy uses)',
    )
    parser.add_argument(
        '--opset', type=int, default=None, help="ONNX opset version (default: the exporter's)"
    )
    parser.add_argument(
        '--parts',
        nargs='+',
        choices=PARTS,
        default=list(PARTS),
        help='what to export (default: all)',
    )
    parser.add_argument(
        '--verify', action='store_true', help='compare each file in onnxruntime with PyTorch'
    )
    parser.add_argument(
        '--rtol',
        type=float,
        default=DEFAULT_RTOL,
        help=f'largest relative difference --verify accepts (default {DEFAULT_RTOL})',
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return _checked(parser, parser.parse_args(argv))


def _checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the default exporter filled in; ``parser.error`` naming the fix for an
    exporter or ``--verify`` this environment cannot run, or a non-positive size."""
    args.exporter = args.exporter or default_exporter()
    if args.exporter == 'dynamo' and dynamo_onnx_unavailable():
        parser.error(f'--dynamo: {dynamo_onnx_unavailable()}; use --torchscript.')
    if args.verify and importlib.util.find_spec('onnxruntime') is None:
        parser.error(
            '--verify runs the exported files in onnxruntime, which is not '
            'installed: pip install onnxruntime (or drop --verify).'
        )
    if min(args.shape) < 1 or args.batch < 1:
        parser.error(f'--shape and --batch must be positive, got {args.shape} and {args.batch}.')
    return args


def input_channels(cfg) -> int:
    """The channels of the model's input: the length of its data preprocessor's
    ``mean``, else 3."""
    mean = (cfg.model.get('data_preprocessor') or {}).get('mean')
    return len(mean) if mean is not None else 3


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = disable_pretrained(load_config(args.config, args.cfg_options))
    model = build_model_from_config(cfg)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    shape = (args.batch, input_channels(cfg), *args.shape)
    inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)
    print(
        f'mmslora {mmslora.__version__}, torch {torch.__version__}: exporting '
        f'{type(model).__name__} for input {shape} with the {args.exporter} exporter'
    )
    results = export_parts(
        model, inputs, args.out_dir, args.parts, args.exporter, args.opset, args.verify
    )
    failed = False
    for result in results:
        if result.path is None:
            print(f'{result.name}: not exported: {result.reason}')
            failed |= result.name == 'backbone'
            continue
        line = f'{result.name}: wrote {result.path}'
        if result.differences is not None:
            abs_diff, rel_diff = result.differences
            ok = rel_diff <= args.rtol
            failed |= not ok
            line += (
                f'; onnxruntime vs PyTorch: max abs difference {abs_diff:.3g}, max '
                f'relative difference {rel_diff:.3g} ('
                f'{"within" if ok else "ABOVE"} --rtol {args.rtol:g})'
            )
        print(line)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
