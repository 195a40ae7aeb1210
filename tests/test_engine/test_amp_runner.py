"""MMEngine's ``AmpOptimWrapper`` (float16 autocast and a dynamic grad scaler, its
defaults) trains a Mask R-CNN whose backbone is wrapped in ``MSLoRABackbone``: two
iterations of the Runner on the embedded nuclei tiles, on a GPU (MMEngine refuses AMP
without one; the GPU leg, ``make test-gpu``)."""

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmslora  # noqa: F401  (registers the mmslora:: configs and the safe loader)
from mmslora_testing import DET

#: a narrow ResNet-18 (16 to 128 channels) in place of the demo's EfficientNet-Lite0
BACKBONE = dict(
    type='mmdet.ResNet',
    depth=18,
    base_channels=16,
    stem_channels=16,
    out_indices=(0, 1, 2, 3),
    zero_init_residual=False,
    init_cfg=None,
)


class _Record(Hook):
    """Keeps the backbone and adapter states when training starts (after the Runner
    initialised the weights), and each iteration's total loss and the grad scaler's
    scale after it."""

    def __init__(self):
        self.before, self.losses, self.scales = None, [], []

    def before_train(self, runner):
        self.before = _states(runner.model)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss'].detach()))
        self.scales.append(runner.optim_wrapper.loss_scaler.get_scale())


def tiny_mask_rcnn_cfg(nuclei_root: str, work_dir: str, optim_type: str) -> Config:
    """The demo's Mask R-CNN config with the narrow ResNet-18 inside the wrapper, two
    training iterations, no validation or checkpoints, ``optim_wrapper.type`` as
    given (its optimizer, paramwise settings and clipping as in the demo)."""
    cfg = Config.fromfile(DET)
    cfg.model.backbone.backbone = BACKBONE
    cfg.model.neck.in_channels = [16, 32, 64, 128]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = nuclei_root
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.train_cfg.update(max_iters=2, val_interval=100)
    for key in (
        'val_dataloader',
        'val_cfg',
        'val_evaluator',
        'test_dataloader',
        'test_cfg',
        'test_evaluator',
    ):
        cfg[key] = None
    cfg.optim_wrapper.type = optim_type
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    return cfg


def _states(model):
    backbone = model.backbone.backbone.state_dict()
    adapters = model.backbone.adapters.state_dict()
    return (
        {k: v.detach().clone() for k, v in backbone.items()},
        {k: v.detach().clone() for k, v in adapters.items()},
    )


@pytest.mark.cuda
def test_amp_optim_wrapper_trains_mask_rcnn_with_mslora(nuclei_root, tmp_path):
    """Finite losses; the scaler's scale a power of two at most one halving below its
    start (so a step was taken); every adapter's zero-started up-projection moved; the
    frozen backbone (weights and BN statistics) bitwise unchanged; float32 weights."""
    from mmengine.optim import AmpOptimWrapper

    runner = Runner.from_cfg(tiny_mask_rcnn_cfg(nuclei_root, str(tmp_path), 'AmpOptimWrapper'))
    record = _Record()
    runner.register_hook(record)
    assert runner.model.backbone.fast_path_report.folded  # the fast path is what trains
    runner.train()
    backbone_before, adapters_before = record.before

    assert isinstance(runner.optim_wrapper, AmpOptimWrapper)
    assert len(record.losses) == 2 and all(torch.isfinite(torch.tensor(record.losses)))
    start = 2.0**16  # torch's GradScaler default, which 'dynamic' keeps
    assert all(s in (start, start / 2) for s in record.scales), record.scales
    backbone_after, adapters_after = _states(runner.model)
    assert all(torch.equal(v, backbone_after[k]) for k, v in backbone_before.items())
    ups = [k for k in adapters_before if k.endswith('proj.up.weight')]
    assert ups and all(not torch.equal(adapters_after[k], adapters_before[k]) for k in ups)
    assert all(torch.isfinite(v).all() for v in adapters_after.values())
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())
    assert next(runner.model.parameters()).is_cuda
