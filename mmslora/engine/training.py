"""Config preparation shared by tools/train.py and tools/test.py."""
import torch
from mmengine.config import Config

REPORT_HOOK = 'mmslora.ParameterReportHook'


def prepare_train_config(cfg: Config, amp: bool = False, resume=None) -> Config:
    """Apply the command-line switches of ``tools/train.py`` to ``cfg`` in place.

    Args:
        amp: use ``AmpOptimWrapper``; raises on a machine without a GPU, where
            MMEngine's AMP wrapper cannot run.
        resume: None, ``'auto'`` (latest checkpoint of the work dir) or a path.
    """
    if amp:
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA GPU (MMEngine\'s AmpOptimWrapper refuses '
                               'CPU); drop --amp to train in fp32 on this machine.')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(h.get('type') in (REPORT_HOOK, 'ParameterReportHook') for h in hooks):
        hooks.append(dict(type=REPORT_HOOK))
    cfg.custom_hooks = hooks
    return cfg


def prepare_test_config(cfg: Config, checkpoint: str, show_dir=None) -> Config:
    """Point ``cfg`` at ``checkpoint`` and, with ``show_dir``, turn on the upstream
    visualisation hook (mmdet/mmseg ``visualization`` default hook)."""
    cfg.load_from = checkpoint
    if show_dir is not None:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise ValueError('--show-dir needs a `visualization` entry in default_hooks '
                             '(mmdet/mmseg configs have one).')
        vis.draw = True
        vis.show = False
        if 'test_out_dir' in vis or vis.get('type', '').endswith('DetVisualizationHook'):
            vis.test_out_dir = show_dir
        else:
            vis.show_dir = show_dir
    return cfg
