"""Every tensor that mmslora makes in a forward or backward takes its dtype and device
from its input: what a GPU run would catch (a ``torch.zeros(n)`` without ``device`` or
``dtype`` is a CPU float32 tensor next to CUDA float16 ones), checked on CPU.

* float64: a dispatch mode records every operator result in a training forward and
  backward and an inference forward; the wrapper adds none that is not float64 or not on
  the input's device to those the plain backbone makes (mmdet's Swin makes a float32
  attention mask by itself).
* the ``meta`` device (shapes without data): the adapters built on it, and every method
  moved to it, run forward and backward there; a tensor made on the CPU beside them
  raises.
"""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from mmslora.models import MSLoRAAdapter
from mmslora.models.peers import METHODS, BottleneckAdapter, MonaAdapter
from mmslora_testing import (
    NARROW_RESNET18,
    TINY_SWIN,
    TINY_VIT_MMPRETRAIN,
    build_in_scope,
    build_method,
    flat,
)

BACKBONES = {
    'mmdet-resnet18': (
        'mmdet',
        NARROW_RESNET18,
    ),
    'mmpretrain-vit': (
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
    'mmdet-swin': ('mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN)),
}
CASES = [(b, m) for b in ('mmdet-resnet18', 'mmpretrain-vit') for m in METHODS]
CASES += [('mmdet-swin', 'mslora')]


class ForeignTensors(TorchDispatchMode):
    """Counts the operator results that are floating point but not ``dtype``, or not on
    ``device``, by (operator, dtype, device); empty ones aside (torch 2.1's
    ``torch.utils.checkpoint`` makes a 0-element float32 CPU placeholder)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.dtype, self.device, self.found = dtype, device, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor)
                and t.numel()
                and (t.device != self.device or t.is_floating_point() and t.dtype != self.dtype)
            ):
                self.found[(str(func), t.dtype, t.device)] += 1
        return out


def _foreign(model, x):
    """:class:`ForeignTensors` of a training forward and backward (the input requires
    grad, so even a linear probe runs backward) and an inference forward."""
    x = x.clone().requires_grad_(True)
    with ForeignTensors(x.dtype, x.device) as mode:
        model.train()
        sum(o.pow(2).mean() for o in flat(model(x))).backward()
        model.eval()
        with torch.no_grad():
            model(x)
    return mode.found


@pytest.mark.parametrize('backbone, method', CASES, ids=[f'{b}-{m}' for b, m in CASES])
def test_float64_runs_make_no_other_dtype_or_device(backbone, method):
    scope, cfg = BACKBONES[backbone]
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    plain = build_in_scope(scope, cfg).double()
    wrapped = build_method(method, scope, cfg).double()
    made = _foreign(wrapped, x)
    assert made - _foreign(plain, x) == Counter(), dict(made)


def skip_unless_checkpoint_runs_on_meta():
    """MSLoRA's training forward recomputes its ``Trans`` chain through
    ``torch.utils.checkpoint``, which on torch 2.1 fails on ``meta``."""
    try:
        checkpoint(
            torch.sin, torch.empty(1, device='meta', requires_grad=True), use_reentrant=False
        )
    except AttributeError as error:
        pytest.skip(
            f'torch {torch.__version__}: torch.utils.checkpoint cannot run on the '
            f'meta device ({error})'
        )


@pytest.mark.parametrize('backbone, method', CASES, ids=[f'{b}-{m}' for b, m in CASES])
def test_every_method_runs_on_the_meta_device(backbone, method):
    """Moved to ``meta`` after it was built (finding the blocks and the folds needs
    data), the wrapper runs a training forward and backward and an inference forward
    there, with the output shapes of the CPU model."""
    if method == 'mslora':
        skip_unless_checkpoint_runs_on_meta()
    scope, cfg = BACKBONES[backbone]
    model = build_method(method, scope, cfg)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        shapes = [o.shape for o in flat(model(x))]
    model.to('meta').train()
    x = x.to('meta').requires_grad_(True)
    outputs = flat(model(x))
    assert [o.shape for o in outputs] == shapes and all(o.is_meta for o in outputs)
    sum(o.pow(2).mean() for o in outputs).backward()
    assert x.grad.is_meta
    assert all(p.grad.is_meta for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert [o.shape for o in flat(model(x))] == shapes


ADAPTERS = {
    'mslora': lambda: MSLoRAAdapter(16, hidden_dim=8, groups=2),
    'mslora-stride-2-zero-scale': lambda: MSLoRAAdapter(
        16, hidden_dim=8, groups=2, trans_stride=2, init='zero_scale'
    ),
    'mslora-sum-no-attention': lambda: MSLoRAAdapter(
        16, hidden_dim=8, groups=2, combine='sum', channel_attention=False, spatial_attention=False
    ),
    'mslora-checkpointed': lambda: MSLoRAAdapter(16, hidden_dim=8, groups=2, with_cp=True),
    'bottleneck': lambda: BottleneckAdapter(16, hidden_dim=8),
    'mona': lambda: MonaAdapter(16, hidden_dim=8),
}


@pytest.mark.parametrize('name', list(ADAPTERS))
def test_adapters_built_and_run_on_the_meta_device(name):
    """Built under ``torch.device('meta')``: parameters, forward (training, with
    autograd, and inference) and backward all stay on ``meta``."""
    if name.startswith('mslora'):
        skip_unless_checkpoint_runs_on_meta()
    with torch.device('meta'):
        adapter = ADAPTERS[name]()
    assert all(p.is_meta for p in adapter.parameters())
    x = torch.empty(2, 16, 7, 5, device='meta', requires_grad=True)
    out = adapter.train()(x)
    assert out.is_meta and out.shape == x.shape
    out.pow(2).sum().backward()
    assert x.grad.is_meta and all(p.grad.is_meta for p in adapter.parameters())
    with torch.no_grad():
        assert adapter.eval()(x).is_meta
