"""Evaluate a checkpoint with an mm* config (the upstream flags).

    mmslora-test CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--method NAME]
                 [--cfg-options k=v ...] [--launcher ...]

(also ``python tools/test.py ...``); CONFIG is a file or a ``mmslora::`` name.
"""

import argparse

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmslora  # noqa: F401
from mmslora.cli import add_common_args, init_cpu_distributed, load_cli_config, prepare_test_config
from mmslora.utils.data_check import check_data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model.')
    parser.add_argument('config', help='test config file path or mmslora:: name')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--show-dir', help='save painted predictions under work_dir/<timestamp>/SHOW_DIR'
    )
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_test_config(
        load_cli_config(args), checkpoint=args.checkpoint, show_dir=args.show_dir
    )
    check_data(cfg, ('test_dataloader',))  # name missing data up front
    init_cpu_distributed(cfg)  # --launcher pytorch without GPUs: CPU DDP over gloo
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.test()
