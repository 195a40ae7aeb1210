"""Train a model from an mm* config with MSLoRA available (the upstream flags).

    mmslora-train CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--method NAME]
                  [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

(also ``python tools/train.py ...``). CONFIG is a file or a shipped config's name,
``mmslora::mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py``. Runs on CPU when no GPU is
present. ``import mmslora`` registers the adapters and switches on safe checkpoint
loading for ``--resume`` and ``load_from``.
"""

import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmslora  # noqa: F401  (registers mmslora.* and safe checkpoint loading)
from mmslora.cli import add_common_args, init_cpu_distributed, load_cli_config, prepare_train_config
from mmslora.utils.data_check import check_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model (MSLoRA-aware).')
    parser.add_argument('config', help='train config file path or mmslora:: name')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest one in the work dir '
        'when no path is given',
    )
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision (needs a GPU)'
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_train_config(load_cli_config(args), amp=args.amp, resume=args.resume)
    check_data(cfg, ('train_dataloader', 'val_dataloader'))  # name missing data up front
    init_cpu_distributed(cfg)  # --launcher pytorch without GPUs: CPU DDP over gloo
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
