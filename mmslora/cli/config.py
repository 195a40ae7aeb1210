"""Command-line arguments and config preparation shared by tools/train.py and
tools/test.py."""

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction

from mmslora.models.peers import METHODS, apply_method
from mmslora.utils.config import resolve_config

REPORT_HOOK = 'mmslora.ParameterReportHook'
RANDOM_STATE_HOOK = 'mmslora.RandomStateHook'
FIT_HOOK = 'mmslora.CheckpointFitHook'


def _add_hooks(cfg: Config, defaults) -> None:
    """Append each default hook config unless ``custom_hooks`` has its type."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    for default in defaults:
        names = (default['type'], default['type'].split('.', 1)[1])
        if not any(h.get('type') in names for h in hooks):
            hooks.append(dict(default))
    cfg.custom_hooks = hooks


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags tools/train.py and tools/test.py share with upstream's tools."""
    parser.add_argument('--work-dir', help='the dir to save logs, models and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument(
        '--method',
        choices=list(METHODS),
        help='switch the MSLoRABackbone of the config to this fine-tuning method (its '
        'defaults, mmslora.models.peers.METHODS; tune it with --cfg-options, e.g. '
        'model.backbone.adapter.hidden_dim=32); the default work dir gets the '
        'method as suffix',
    )


def load_cli_config(args: argparse.Namespace) -> Config:
    """Load ``args.config`` (a file or a ``mmslora::`` name) and apply ``--method``
    (then ``--cfg-options``, so they can tune the method), ``--launcher`` and
    ``--work-dir`` (default ``./work_dirs/<config name>[_<method>]``), as upstream's
    tools do."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(resolve_config(args.config))
    cfg.launcher = args.launcher
    method = args.method
    if method is not None:
        cfg.model.backbone = apply_method(cfg.model.get('backbone'), method)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', f'{name}_{method}' if method else name)
    return cfg


def prepare_train_config(cfg: Config, amp: bool = False, resume=None) -> Config:
    """Apply the command-line switches of ``tools/train.py`` to ``cfg`` in place.

    Args:
        amp: use ``AmpOptimWrapper``; raises on a machine without a GPU, where
            MMEngine's AMP wrapper cannot run.
        resume: None, ``'auto'`` (latest checkpoint of the work dir) or a path.

    Also adds, unless the config has them, ``mmslora.ParameterReportHook`` (the
    parameter report at the start), ``mmslora.RandomStateHook`` (random state saved in
    checkpoints and restored on resume, so a resumed run is the uninterrupted run) and
    ``mmslora.CheckpointFitHook`` (a checkpoint for another adapter config is refused
    before anything is loaded).
    """
    if amp:
        if not torch.cuda.is_available():
            raise RuntimeError(
                '--amp needs a CUDA GPU (MMEngine\'s AmpOptimWrapper refuses '
                'CPU); drop --amp to train in fp32 on this machine.'
            )
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    _add_hooks(cfg, [dict(type=REPORT_HOOK), dict(type=RANDOM_STATE_HOOK), dict(type=FIT_HOOK)])
    return cfg


def prepare_test_config(cfg: Config, checkpoint: str, show_dir=None) -> Config:
    """Point ``cfg`` at ``checkpoint`` and, with ``show_dir``, turn on the upstream
    visualisation hook (mmdet/mmseg ``visualization`` default hook). Adds
    ``mmslora.CheckpointFitHook(strict=True)``: a checkpoint that does not fit the model
    in every key and shape is refused rather than evaluated half-loaded."""
    cfg.load_from = checkpoint
    _add_hooks(cfg, [dict(type=FIT_HOOK, strict=True)])
    if show_dir is not None:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise ValueError(
                '--show-dir needs a `visualization` entry in default_hooks '
                '(mmdet/mmseg configs have one).'
            )
        vis.draw = True
        vis.show = False
        if 'test_out_dir' in vis or vis.get('type', '').endswith('DetVisualizationHook'):
            vis.test_out_dir = show_dir
        else:
            vis.show_dir = show_dir
    return cfg
