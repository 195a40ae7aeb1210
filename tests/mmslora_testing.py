"""Helpers shared by the test files (importable because tests/conftest.py puts this
folder on sys.path; the name avoids mmseg's top-level `tests` package)."""

import copy
import importlib.util
import os
import os.path as osp
import subprocess
import sys
import sysconfig
import warnings

import numpy as np
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmslora.models.peers import wrapper_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py')
SEG = osp.join(ROOT, 'configs/demo/upernet_effnet-lite0-mslora_nuclei-256x256.py')
CLS = osp.join(ROOT, 'configs/demo/effnet-lite0-mslora_fashion-mnist.py')
#: the site-packages of the stack running the tests
STACK = sysconfig.get_paths()['purelib']


def load_tool(relative_path: str):
    """Import a script of the repository (tools/, benchmarks/: not packages) as a
    module, once."""
    name = 'mmslora_tool_' + relative_path.replace('/', '_').replace('.py', '')
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, relative_path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def registry_of(scope):
    """The MODELS registry of an OpenMMLab toolbox."""
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def build_in_scope(scope, cfg):
    """Build ``cfg`` from the toolbox's registry inside its default scope."""
    with DefaultScope.overwrite_default_scope(scope):
        return registry_of(scope).build(copy.deepcopy(cfg))


def flat(outputs):
    """The tensors of a backbone's (nested) outputs, in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat(item)]


def assert_same_outputs(model, plain, x, exact=False):
    """``model`` and ``plain`` give equal outputs on ``x`` (eval, no grad): to 1e-5 of
    each output's scale (the frozen fast path folds BNs, which reorders products), or
    bitwise with ``exact``."""
    model.eval()
    plain.eval()
    with torch.no_grad():
        got, want = flat(model(x)), flat(plain(x))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.shape == b.shape
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()) + 1e-12)


class ToyRegressor(BaseModel):
    """``body(inputs).squeeze(-1)`` as an MMEngine model: squared-error loss in
    ``'loss'`` mode, a list of predictions in ``'predict'`` mode."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, inputs, labels=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.body(inputs).squeeze(-1)
        if mode == 'loss':
            labels = torch.stack(labels) if isinstance(labels, list) else labels
            return dict(loss=((out - labels) ** 2).mean())
        if mode == 'predict':
            return list(out.detach())
        return out


# Tiny backbone configs shared by the model tests (fast on CPU, real mm* classes).
#: mmdet's ResNet-18 at 1/16 of the weights (16 channels at the stem), no download
NARROW_RESNET18 = dict(
    type='mmdet.ResNet', depth=18, base_channels=16, stem_channels=16, init_cfg=None
)
TINY_SWIN = dict(
    embed_dims=32,
    depths=(2, 2),
    num_heads=(1, 2),
    window_size=4,
    out_indices=(0, 1),
    strides=(4, 2),
    init_cfg=None,
)
TINY_VIT_MMSEG = dict(
    img_size=(64, 64),
    patch_size=16,
    embed_dims=32,
    num_layers=2,
    num_heads=2,
    mlp_ratio=2,
    out_indices=(1,),
    init_cfg=None,
)
TINY_VIT_MMPRETRAIN = dict(
    arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
    img_size=64,
    patch_size=16,
    out_type='featmap',
    init_cfg=None,
)
RESNET18 = dict(type='mmdet.ResNet', depth=18, init_cfg=None)


def skip_unless_autocast(device, dtype):
    """Skip (with the reason) where ``torch.autocast(device.type, dtype)`` does not cast:
    older torch (2.1) autocasts CPU to bfloat16 only."""
    import pytest

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with torch.autocast(device.type, dtype=dtype):
                a = torch.ones(2, 2, device=device)
                casts = torch.mm(a, a).dtype == dtype
    except RuntimeError:
        casts = False
    if not casts:
        pytest.skip(
            f'torch {torch.__version__} has no {device.type} autocast to {dtype} '
            '(older torch autocasts CPU to bfloat16 only)'
        )


def wrap(backbone_cfg, **kwargs):
    """An ``mmslora.MSLoRABackbone`` config around ``backbone_cfg``."""
    return dict(type='mmslora.MSLoRABackbone', backbone=backbone_cfg, **kwargs)


# --------------------------------------------------------------------------
# Checkpoint tests: a toy Runner whose checkpoints hold what OpenMMLab's do
# (HistoryBuffers, numpy scalars, a MultiStepLR), and loaded-state comparisons
# --------------------------------------------------------------------------
def snapshot(model):
    """Detached copies of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    """``model``'s state dict equals the ``snapshot`` ``before``."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f'the failed load changed {changed[:5]}'


def toy_model() -> ToyRegressor:
    return ToyRegressor(nn.Linear(2, 1))


class ToyDataset(Dataset):
    """16 fixed random (2 features, 1 target) samples."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 2, generator=gen)
        self.y = torch.randn(16, generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], labels=self.y[idx])


class ToyMetric(BaseMetric):
    """Returns numpy scalars, as many OpenMMLab metrics do."""

    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        labels = torch.stack(data_batch['labels'])
        err = (torch.stack(data_samples) - labels).abs().mean()
        self.results.append(float(err))

    def compute_metrics(self, results):
        return dict(
            mae=np.float32(np.mean(results)),
            mae64=np.float64(np.mean(results)),
            n=np.int64(len(results)),
        )


def checkpointing_runner(work_dir, name, by_epoch=False, max_iters=4, max_epochs=2, **kwargs):
    """A Runner of :func:`toy_model` on :class:`ToyDataset` that validates with
    :class:`ToyMetric` and writes checkpoints (every 2 iterations, or every epoch)."""
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
        checkpoint = dict(type='CheckpointHook', interval=1)
    else:
        train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=2)
        checkpoint = dict(
            type='CheckpointHook', interval=2, by_epoch=False, save_best='toy/mae', rule='less'
        )
    return Runner(
        model=toy_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=4,
            num_workers=0,
        ),
        val_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4,
            num_workers=0,
        ),
        val_evaluator=dict(type=ToyMetric),
        val_cfg=dict(),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[3], by_epoch=False),
        default_hooks=dict(checkpoint=checkpoint),
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs,
    )


def evil_checkpoint(path, marker):
    """A checkpoint whose unpickling runs ``touch marker``."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': Payload()}, str(path))


# The backbones every fine-tuning method is checked on: (id, toolbox scope, config)
PEER_BACKBONES = [
    # zero_init_residual (mmdet's default for random init) zeroes each block's last BN
    # scale: in a frozen random backbone no gradient would reach the layers before it,
    # which a pretrained backbone does not have
    (
        'mmdet-resnet18',
        'mmdet',
        dict(type='mmdet.ResNet', depth=18, zero_init_residual=False, init_cfg=None),
    ),
    (
        'mmpretrain-vit',
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
    ('mmdet-swin', 'mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN)),
    # depthwise convolutions: LoRA must leave them alone
    (
        'effnet-lite0',
        'mmpretrain',
        dict(type='mmslora.EfficientNetLite', out_indices=(2, 4, 7), init_cfg=None),
    ),
]


def build_method(method, scope, cfg, **overrides):
    """``cfg`` wrapped for fine-tuning ``method`` (peers.METHODS), built in ``scope`` and
    initialised, seeded."""
    torch.manual_seed(0)
    model = build_in_scope(scope, wrapper_cfg(method, cfg, **overrides))
    model.init_weights()
    return model


def _hrnet_stage(branches, block):
    return dict(
        num_modules=1,
        num_branches=branches,
        block=block,
        num_blocks=(1,) * branches,
        num_channels=(18, 36, 72, 144)[:branches],
    )


#: HRNet-W18 with one block per branch: 18/36/72/144 channels (18 is not divisible by 8)
HRNET_W18_TINY = dict(
    stage1=dict(
        num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1,), num_channels=(16,)
    ),
    stage2=_hrnet_stage(2, 'BASIC'),
    stage3=_hrnet_stage(3, 'BASIC'),
    stage4=_hrnet_stage(4, 'BASIC'),
)


def assert_share_of(percent: float, count: int) -> None:
    """A percentage computed over ``count`` items (an accuracy on ``count`` images) is
    ``100 k / count`` for a whole ``k`` in [0, count]: it was computed on exactly those
    items."""
    k = percent * count / 100
    assert abs(k - round(k)) < 1e-3 and 0 <= round(k) <= count, (percent, count)


def assert_adapters_trained(checkpoint: str) -> None:
    """Every zero-started up-projection of the checkpoint's MSLoRA adapters moved."""
    from mmslora.utils.checkpoint import safe_torch_load

    state = safe_torch_load(checkpoint)['state_dict']
    ups = {k: v for k, v in state.items() if k.endswith('proj.up.weight')}
    assert ups and all(torch.isfinite(v).all() for v in ups.values())
    assert all(v.abs().sum() > 0 for v in ups.values()), [
        k for k, v in ups.items() if not v.abs().sum() > 0
    ]


# --------------------------------------------------------------------------
# Clean environments: the stack without mmslora (drop-in and merged-checkpoint tests)
# --------------------------------------------------------------------------
def run_clean(cmd, cwd, timeout=300, fails=False):
    """``cmd`` in ``cwd`` without the repository or PYTHONPATH in reach; its output.
    It must succeed, or with ``fails`` fail."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert (proc.returncode != 0) == fails, f'{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc.stdout + proc.stderr


def stack_venv(env_dir, with_pip=True):
    """A new venv at ``env_dir`` that sees the stack's site-packages (a .pth line: the
    .pth files there, the editable mmslora's among them, are not read), so mmslora is
    not importable in it; ``with_pip=False`` skips installing pip (faster) where
    nothing is installed into it. Returns ``(python, site-packages)``."""
    run_clean(
        [sys.executable, '-m', 'venv', str(env_dir)] + ([] if with_pip else ['--without-pip']),
        cwd=osp.dirname(str(env_dir)),
    )
    python = osp.join(str(env_dir), 'bin', 'python')
    site = run_clean(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        cwd=str(env_dir),
    ).strip()
    with open(osp.join(site, 'the_stack.pth'), 'w') as f:
        f.write(STACK + '\n')
    probe = 'import mmdet, importlib.util; print(importlib.util.find_spec("mmslora"))'
    assert run_clean([python, '-c', probe], cwd=str(env_dir)).strip() == 'None'
    return python, site
