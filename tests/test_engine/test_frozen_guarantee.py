"""The frozen backbone stays frozen under everything a real run does.

Each task family's demo config (Mask R-CNN, UperNet, the classifier) trains a few
iterations in-process through MMEngine's Runner with the hooks ``tools/train.py``
adds, an ``EMAHook`` (which deep-copies the model, averages every parameter, swaps
the averages in for validation and into the saved checkpoint), and, for one run,
gradient checkpointing (``with_cp=True`` on an mmdet ResNet-18 inside
``MSLoRABackbone``). Asserted every time:

* the wrapped backbone's state dict (parameters *and* BN buffers) is bitwise the one
  training started from, in the live model, in the EMA model and in the checkpoint;
* no backbone parameter requires or holds a gradient;
* every adapter tensor received a non-zero gradient, and the adapters moved.
"""

import copy

import pytest
import torch
import torch.utils.checkpoint
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

import mmslora  # noqa: F401
from mmslora.cli import prepare_train_config
from mmslora.models import MSLoRABackbone
from mmslora.utils.checkpoint import safe_torch_load
from mmslora_testing import CLS, DET, SEG, assert_share_of

ITERS = 2  # a zero-initialised adapter branch passes gradients from step 2 on

pytestmark = pytest.mark.usefixtures('one_thread')


class FrozenProbe(Hook):
    """Snapshots the wrapped backbone and the adapters when training starts (after
    weight init), and sums the adapters' gradients as backward produces them."""

    def before_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        wrappers = [m for m in model.modules() if isinstance(m, MSLoRABackbone)]
        assert len(wrappers) == 1
        self.wrapper = wrappers[0]
        self.prefix = next(n for n, m in model.named_modules() if m is self.wrapper) + '.'
        self.frozen = {k: v.clone() for k, v in self.wrapper.backbone.state_dict().items()}
        self.adapters = {k: v.detach().clone() for k, v in self.wrapper.adapters.named_parameters()}
        self.grad_sums = {k: 0.0 for k in self.adapters}
        for name, param in self.wrapper.adapters.named_parameters():
            param.register_hook(self._recorder(name))

    def _recorder(self, name):
        def record(grad):
            self.grad_sums[name] += float(grad.abs().sum())

        return record


def train(cfg, tmp_path, probe, ema=True):
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f'frozen_{tmp_path.name}'
    cfg.log_level = 'WARNING'
    cfg.merge_from_dict(
        {
            'train_dataloader.num_workers': 0,
            'train_dataloader.persistent_workers': False,
            'train_cfg.max_iters': ITERS,
            'train_cfg.val_interval': ITERS,
            'default_hooks.checkpoint.interval': ITERS,
            'randomness.seed': 0,
        }
    )
    cfg = prepare_train_config(cfg)
    if ema:
        cfg.custom_hooks = [dict(type='EMAHook')] + list(cfg.custom_hooks)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe, priority='LOWEST')
    runner.train()
    return runner


def no_validation(cfg):
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    return cfg


def assert_frozen_and_trained(runner, probe, checkpoint):
    wrapper = probe.wrapper
    # the live model: bitwise, parameters and buffers
    state = wrapper.backbone.state_dict()
    assert state.keys() == probe.frozen.keys()
    changed = [k for k, v in probe.frozen.items() if not torch.equal(v, state[k])]
    assert not changed, f'frozen backbone changed: {changed[:5]}'
    assert not any(p.requires_grad or p.grad is not None for p in wrapper.backbone.parameters())
    # the adapters trained
    no_grad = [k for k, v in probe.grad_sums.items() if not v > 0]
    assert not no_grad, f'adapter tensors without gradient: {no_grad[:5]}'
    now = dict(wrapper.adapters.named_parameters())
    assert any(not torch.equal(now[k], v) for k, v in probe.adapters.items())
    for name, adapter in wrapper.adapters.items():
        assert any(
            not torch.equal(p, probe.adapters[f'{name}.{k}']) for k, p in adapter.named_parameters()
        ), f'adapter {name} did not move'
    # the saved checkpoint (EMAHook swaps its averages into `state_dict`)
    saved = safe_torch_load(checkpoint, map_location='cpu')
    for key, value in probe.frozen.items():
        assert torch.equal(saved['state_dict'][probe.prefix + 'backbone.' + key], value), key
    ema = [h for h in runner.hooks if isinstance(h, EMAHook)]
    if ema:
        assert 'ema_state_dict' in saved
        ema_model = ema[0].ema_model.module
        ema_wrapper = [m for m in ema_model.modules() if isinstance(m, MSLoRABackbone)][0]
        ema_state = ema_wrapper.backbone.state_dict()
        for key, value in probe.frozen.items():
            assert torch.equal(ema_state[key], value), f'EMA frozen {key}'


def test_detection_with_ema(nuclei_root, tmp_path):
    cfg = Config.fromfile(DET)
    cfg.merge_from_dict(
        {'train_dataloader.dataset.data_root': nuclei_root, 'train_dataloader.batch_size': 1}
    )
    probe = FrozenProbe()
    runner = train(no_validation(cfg), tmp_path, probe)
    assert_frozen_and_trained(runner, probe, str(tmp_path / f'iter_{ITERS}.pth'))


def test_segmentation_with_ema(nuclei_root, tmp_path):
    cfg = Config.fromfile(SEG)
    cfg.merge_from_dict(
        {'train_dataloader.dataset.data_root': nuclei_root, 'train_dataloader.batch_size': 2}
    )
    probe = FrozenProbe()
    runner = train(no_validation(cfg), tmp_path, probe)
    assert_frozen_and_trained(runner, probe, str(tmp_path / f'iter_{ITERS}.pth'))


def cls_cfg(fashion_root):
    cfg = Config.fromfile(CLS)
    cfg.merge_from_dict(
        {
            'train_dataloader.dataset.data_root': fashion_root,
            'val_dataloader.dataset.data_root': fashion_root,
            'test_dataloader.dataset.data_root': fashion_root,
            'train_dataloader.dataset.indices': 16,
            'val_dataloader.dataset.indices': 8,
            'train_dataloader.batch_size': 4,
            'val_dataloader.num_workers': 0,
        }
    )
    return cfg


def test_classification_with_ema_and_validation(fashion_root, tmp_path):
    """With validation: EMAHook swaps the averages in and back out around it."""
    probe = FrozenProbe()
    runner = train(cls_cfg(fashion_root), tmp_path, probe)
    # validated on exactly the 8 images of cls_cfg
    assert_share_of(runner.message_hub.get_scalar('val/accuracy/top1').current(), 8)
    assert_frozen_and_trained(runner, probe, str(tmp_path / f'iter_{ITERS}.pth'))


def test_gradient_checkpointing_with_ema(fashion_root, tmp_path, monkeypatch):
    """``with_cp=True``: mmdet's ResNet blocks recompute their forward in backward
    (``torch.utils.checkpoint``); the adapters' forward hooks still run once per block
    and their gradients still arrive, the frozen backbone still gets none."""
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', counting_checkpoint)
    cfg = cls_cfg(fashion_root)
    cfg.model.backbone.backbone = dict(
        type='mmdet.ResNet', depth=18, with_cp=True, out_indices=(3,), init_cfg=None
    )
    cfg.model.backbone.adapter.hidden_dim = 16
    cfg.model.head.in_channels = 512
    probe = FrozenProbe()
    runner = train(no_validation(cfg), tmp_path, probe)
    # blocks after the first adapter see inputs that require grad: 7 of 8 checkpoint
    assert len(calls) == 7 * ITERS
    assert_frozen_and_trained(runner, probe, str(tmp_path / f'iter_{ITERS}.pth'))


def test_deep_copied_wrapper_runs_its_own_adapters():
    torch.manual_seed(0)
    model = MSLoRABackbone(
        backbone=dict(type='mmdet.ResNet', depth=18, init_cfg=None),
        adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4),
    ).eval()
    for adapter in model.adapters.values():
        torch.nn.init.normal_(adapter.proj.up.weight, std=0.1)
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = twin(x)[-1].clone()
        for adapter in twin.adapters.values():
            adapter.proj.up.weight.zero_()  # the copy's adapters now add nothing
        assert not torch.equal(twin(x)[-1], before)
