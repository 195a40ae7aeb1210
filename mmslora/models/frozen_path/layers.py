"""The fast forwards of frozen layers, and putting them on a backbone's instances.

Each replaces one method of one module instance (an instance attribute holding a
``functools.partial``, not a submodule), so the state dict and its keys are the
upstream ones and ``copy.deepcopy`` (EMA models) copies the fast path with the module.
"""

import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmslora.compat.torch import is_compiling, records_autograd
from ..discovery import working_input
from .folding import FOLD_ATTR, find_folds
from .functions import ChannelAffine, FrozenConv2d, MaskedClamp, scaled

__all__ = ['FastPathReport', 'enable_frozen_fast_path', 'disable_frozen_fast_path']

BN_FORWARDS = {_BatchNorm.forward, nn.SyncBatchNorm.forward}
#: ReLU-like modules: their (min, max) clamp range
CLAMPS = {nn.ReLU: (0.0, None), nn.ReLU6: (0.0, 6.0)}


@dataclass
class FastPathReport:
    """What :func:`enable_frozen_fast_path` patched (module names)."""

    convs: List[str] = field(default_factory=list)
    folded: Dict[str, str] = field(default_factory=dict)  # BN -> its convolution
    affine_norms: List[str] = field(default_factory=list)
    activations: List[str] = field(default_factory=list)
    unfolded: Dict[str, str] = field(default_factory=dict)  # BN -> why not folded

    def summary(self) -> str:
        return (
            f'frozen fast path: {len(self.convs)} Conv2d, '
            f'{len(self.folded)} BN folded into their convolution, '
            f'{len(self.affine_norms)} BN as affine maps, '
            f'{len(self.activations)} ReLU with masks'
        )


def _needs_graph(x: torch.Tensor) -> bool:
    """Will autograd need this layer's backward? (Never while an exporter records: it
    then sees the layers' plain operations.)"""
    return records_autograd() and x.requires_grad


def conv_forward(
    conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """Replaces ``Conv2d._conv_forward(x, weight, bias)``: every ``Conv2d`` subclass whose
    forward ends there (mmcv's wrappers, TF-style padding, weight standardisation that
    passes its own ``weight``) runs the fast path."""
    fold = conv.__dict__.get(FOLD_ATTR)
    scale = None
    if fold is not None and fold.active(conv_out_numel(conv, x)):
        if not torch.is_grad_enabled() and weight is conv.weight and bias is conv.bias:
            weight, bias = fold.inference_terms()
        else:
            scale, bias = fold.training_terms(bias)
    if (
        weight.requires_grad
        or not _needs_graph(x)
        or conv.padding_mode != 'zeros'
        or isinstance(conv.padding, str)
        or x.dim() != 4
    ):
        # a trainable weight (fine-tuning), no input gradient to pass, a padding that
        # the transposed convolution does not express, or an unbatched input: the
        # layer's own math
        return nn.Conv2d._conv_forward(conv, x, scaled(weight, scale), bias)
    return FrozenConv2d.apply(
        x, weight, scale, bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )


def conv_out_numel(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Elements of ``conv``'s output for input ``x`` (its shape, before it runs)."""
    if isinstance(conv.padding, str):  # 'same' keeps the size ('valid' is rare)
        return x.numel() // x.shape[-3] * conv.out_channels
    size = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(
            x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride
        )
    ]
    return (
        x.numel()
        // (x.shape[-3] * x.shape[-2] * x.shape[-1])
        * conv.out_channels
        * size[0]
        * size[1]
    )


def bn_forward(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Replaces an eval-mode BN's ``forward``: nothing where it is folded into the
    convolution before it, else an affine map that keeps only its scale."""
    fold = bn.__dict__.get(FOLD_ATTR)
    if fold is not None and fold.active(x.numel()):
        return x  # the convolution before it applied it
    if (
        bn.training
        or not bn.track_running_stats
        or bn.running_mean is None
        or bn.weight is None
        or bn.weight.requires_grad
        or not _needs_graph(x)
    ):
        return type(bn).forward(bn, x)
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return ChannelAffine.apply(x, scale, shift)


def clamp_forward(
    act: nn.Module, low: float, high: Optional[float], x: torch.Tensor
) -> torch.Tensor:
    """Replaces a ReLU's / ReLU6's ``forward``: a bool mask kept for backward. Under
    ``torch.compile`` the layer's own forward: the compiler's partitioner chooses what
    its backward keeps (dynamo cannot trace an in-place function with dynamic shapes)."""
    if not _needs_graph(x) or is_compiling():
        return type(act).forward(act, x)
    return MaskedClamp.apply(x, low, high, bool(getattr(act, 'inplace', False)))


FAST_METHODS = (conv_forward, bn_forward, clamp_forward)


def _fast_method(module: nn.Module) -> Optional[Tuple[str, functools.partial]]:
    """``(method name, fast method)`` for ``module``, or None where none applies."""
    cls = type(module)
    if isinstance(module, nn.Conv2d) and cls._conv_forward is nn.Conv2d._conv_forward:
        return '_conv_forward', functools.partial(conv_forward, module)
    if cls.forward in BN_FORWARDS and isinstance(module, nn.BatchNorm2d) and module.affine:
        return 'forward', functools.partial(bn_forward, module)
    if cls in CLAMPS:
        return 'forward', functools.partial(clamp_forward, module, *CLAMPS[cls])
    return None


def enable_frozen_fast_path(
    backbone: nn.Module, fold_bn: bool = True, sample: Optional[torch.Tensor] = None
) -> FastPathReport:
    """Give the eligible layers of ``backbone`` the fast forward (see
    :mod:`mmslora.models.frozen_path`).

    Args:
        backbone: the module (a frozen backbone).
        fold_bn: fold eval-mode BNs into their convolutions. Default True.
        sample: an input the backbone takes, for the dry forwards that find and check
            the folds. Default: the first of the block finder's sample inputs that runs
            (none runs: nothing is folded).

    Returns:
        FastPathReport: the names of the layers that run the fast path.
    """
    disable_frozen_fast_path(backbone)
    report = FastPathReport()
    names = {module: name for name, module in backbone.named_modules()}
    lists = dict(zip(FAST_METHODS, (report.convs, report.affine_norms, report.activations)))
    patched: Dict[object, set] = {method: set() for method in FAST_METHODS}
    for module, name in names.items():
        fast = _fast_method(module)
        if fast is not None:
            setattr(module, *fast)
            lists[fast[1].func].append(name)
            patched[fast[1].func].add(module)
    if fold_bn and report.convs and report.affine_norms:
        sample = working_input(backbone) if sample is None else sample
        if sample is not None:
            kept, refused = find_folds(backbone, sample, patched[conv_forward], patched[bn_forward])
            for fold in refused:
                report.unfolded[names[fold.bn]] = (
                    'differs from the plain layers (its input is used elsewhere too)'
                )
            for fold in kept:
                report.folded[names[fold.bn]] = names[fold.conv]
                report.affine_norms.remove(names[fold.bn])
    return report


def disable_frozen_fast_path(backbone: nn.Module) -> None:
    """Give every layer of ``backbone`` its own forward back (undo the fast path)."""
    for module in backbone.modules():
        for attr in ('forward', '_conv_forward'):
            method = module.__dict__.get(attr)
            if isinstance(method, functools.partial) and method.func in FAST_METHODS:
                delattr(module, attr)
        module.__dict__.pop(FOLD_ATTR, None)
