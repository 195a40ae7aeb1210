"""The frozen fast path: frozen layers pass gradients back without keeping activations.

Autograd keeps a layer's input for the gradient of its weight, also when the weight is
frozen. A frozen linear map needs only its weight to pass a gradient back (the insight
of TinyTL, Cai et al., NeurIPS 2020), so on a frozen backbone with adapters, whose
gradients must flow through the frozen layers, this module replaces (per module
instance, with the state dict untouched) the forward of

* ``Conv2d`` with a frozen weight: ``y = W * x + b`` keeps only ``W`` (a parameter, no
  new memory); ``dL/dx = W^T dL/dy`` (the transposed convolution), ``dL/db = sum dL/dy``
  where the bias trains (BitFit). (A frozen ``Linear`` needs nothing: torch's autograd
  keeps its input only when the weight's gradient is wanted, on torch 2.1 to 2.14;
  ``tests/test_models/test_frozen_path.py`` checks it. Convolution and batch norm keep
  theirs whatever is frozen.)
* eval-mode ``BatchNorm2d`` with a frozen weight, ``y = x s + t`` with
  ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean s``: folded into the convolution
  that produced its input (``W' = W s``, ``b' = b s + t``; the BN then passes its input
  through), or, where there is none, an affine map that keeps only ``s``;
* ``ReLU`` / ``ReLU6``: a bool mask (1 byte per element) instead of a float map.

Folding is found once, by a dry forward (which BN reads which convolution's output),
and checked at once by a second one with randomised BN statistics against the plain
layers; a pair whose output differs is left unfolded. It is decided again at every
forward from the live modules: a BN in training mode, a trainable BN weight, a hook on
either layer, or a BN replaced in its parent (``SyncBatchNorm`` conversion) turns that
fold off, and so does, under autograd, a convolution whose output is smaller than its
weight (scaling the weight in forward and backward would cost more than the BN's own
two passes over the output). Folded weights are computed from the current tensors at
every forward (kept
between forwards only without autograd, keyed by the tensors' storage and version), so
``init_weights``, ``load_state_dict``, ``load_from`` and resume take effect at once.
A layer whose weight trains, a
class that overrides the replaced method (``Conv2d._conv_forward``, so every subclass
whose forward ends there, mmcv's wrappers or TF-style padding, runs the fast path;
BN/ReLU ``forward``), a padding mode other than zeros, and any layer while no
input requires grad run their own forward. Under autocast the layers cast as autocast does.

Outputs equal the plain layers' up to float rounding (folding reorders products);
``enable_frozen_fast_path(..., fold_bn=False)`` keeps convolution outputs bitwise.
"""
import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .discovery import working_input

__all__ = ['enable_frozen_fast_path', 'disable_frozen_fast_path', 'FastPathReport']

#: attribute (in the module's ``__dict__``, not a submodule) with a layer's fold record
FOLD_ATTR = '_mmslora_fold'
#: a folded pair must match the plain pair to this relative error (random statistics)
FOLD_CHECK_RTOL = 1e-4
#: while the folds are looked for: the convolutions whose fast ``_conv_forward`` ran (a
#: subclass whose forward calls ``F.conv2d`` itself, as mmcv's adaptive padding does,
#: would skip a fold made for it)
_CONVS_RUN: Optional[set] = None


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
        return (f'frozen fast path: {len(self.convs)} Conv2d, '
                f'{len(self.folded)} BN folded into their convolution, '
                f'{len(self.affine_norms)} BN as affine maps, '
                f'{len(self.activations)} ReLU with masks')


# ---------------------------------------------------------------- autograd
class _FrozenConv2d(torch.autograd.Function):
    """``conv2d(x, W * s, b)`` keeping ``W`` and ``s`` (not ``x``) for backward."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight, scale)
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, _scaled(weight, scale), bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # convolution_backward reads only the shape of its input: an uninitialised
            # buffer (never written, so never paged in) lets it run the kernel that
            # autograd's own backward runs
            layout = (torch.channels_last if not grad.is_contiguous()
                      and grad.is_contiguous(memory_format=torch.channels_last)
                      else torch.contiguous_format)
            grad_x = torch.ops.aten.convolution_backward(
                grad, torch.empty(shape, dtype=grad.dtype, device=grad.device,
                                  memory_format=layout),
                _scaled(weight, scale).to(grad.dtype), None, stride, padding, dilation,
                False, [0, 0], groups, (True, False, False))[0]
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, None, grad_bias, None, None, None, None


class _ChannelAffine(torch.autograd.Function):
    """``x s + t`` per channel of a (B, C, ...) map, keeping only ``s``."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(scale)
        view = (1, -1) + (1, ) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        scale, = ctx.saved_tensors
        view = (1, -1) + (1, ) * (grad.dim() - 2)
        dims = (0, ) + tuple(range(2, grad.dim()))
        grad_x = grad * scale.to(grad.dtype).view(view) if ctx.needs_input_grad[0] else None
        grad_shift = grad.sum(dims) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_shift


class _MaskedClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` keeping a bool mask of the unclamped elements."""

    @staticmethod
    def forward(ctx, x, low, high, inplace):
        out = x.clamp_(low, high) if inplace else x.clamp(low, high)
        mask = out > low
        if high is not None:
            mask &= out < high
        ctx.save_for_backward(mask)
        if inplace:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        mask, = ctx.saved_tensors
        # a bool mask as uint8: float * uint8 is about as fast as threshold_backward,
        # float * bool about half as fast
        return grad * mask.view(torch.uint8), None, None, None


def _scaled(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    return weight if scale is None else weight * scale.view(-1, 1, 1, 1)


# ---------------------------------------------------------------- folding
@dataclass(eq=False)
class _Fold:
    """A BN folded into the convolution before it; both layers hold the same record."""
    conv: nn.Conv2d
    bn: _BatchNorm
    parent: nn.Module  # the module that holds the BN as ``child``
    child: str
    cache: Optional[Tuple[tuple, torch.Tensor, torch.Tensor]] = None

    def active(self, out_numel: int) -> bool:
        """Fold now? Decided from the live modules at every forward. Under autograd the
        folded weight is scaled in forward and again in backward: it pays where the
        convolution's output (``out_numel`` elements, which the BN would scale twice)
        is at least as large as its weight; elsewhere the BN runs as an affine map
        (equally free of saved inputs)."""
        conv, bn = self.conv, self.bn
        if torch.is_grad_enabled() and out_numel < conv.weight.numel():
            return False
        return (not bn.training and not bn.weight.requires_grad
                and FOLD_ATTR in conv.__dict__ and FOLD_ATTR in bn.__dict__
                and getattr(self.parent, self.child, None) is bn
                and not (conv._forward_hooks or conv._forward_pre_hooks
                         or bn._forward_hooks or bn._forward_pre_hooks))

    def training_terms(self, conv_bias: Optional[torch.Tensor]
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``s`` (no grad) and ``b' = b s + beta - mean s`` (with autograd: BitFit
        trains the biases through it). Nothing is kept between forwards."""
        self.cache = None
        bn = self.bn
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv_bias is not None:
            bias = bias + conv_bias * scale
        return scale, bias

    def inference_terms(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(W s, b')`` without autograd, kept until a tensor they come from changes
        (its storage or version: a weight load or an in-place update)."""
        conv, bn = self.conv, self.bn
        key = tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device)
                    for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                              bn.running_var))
        if self.cache is None or self.cache[0] != key:
            scale, bias = self.training_terms(conv.bias)
            self.cache = (key, _scaled(conv.weight, scale), bias)
        return self.cache[1], self.cache[2]


# ---------------------------------------------------------------- forwards
def _needs_graph(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Replaces ``Conv2d._conv_forward(x, weight, bias)``: every ``Conv2d`` subclass whose
    forward ends there (mmcv's wrappers, TF-style padding, weight standardisation that
    passes its own ``weight``) runs the fast path."""
    if _CONVS_RUN is not None:
        _CONVS_RUN.add(conv)
    fold = conv.__dict__.get(FOLD_ATTR)
    scale = None
    if fold is not None and fold.active(_conv_out_numel(conv, x)):
        if not torch.is_grad_enabled() and weight is conv.weight and bias is conv.bias:
            weight, bias = fold.inference_terms()
        else:
            scale, bias = fold.training_terms(bias)
    if (weight.requires_grad or not _needs_graph(x) or conv.padding_mode != 'zeros'
            or isinstance(conv.padding, str) or x.dim() != 4):
        # a trainable weight (fine-tuning), no input gradient to pass, a padding that
        # the transposed convolution does not express, or an unbatched input: the
        # layer's own math
        return nn.Conv2d._conv_forward(conv, x, _scaled(weight, scale), bias)
    return _FrozenConv2d.apply(x, weight, scale, bias, conv.stride, conv.padding,
                               conv.dilation, conv.groups)


def _conv_out_numel(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Elements of ``conv``'s output for input ``x`` (its shape, before it runs)."""
    if isinstance(conv.padding, str):  # 'same' keeps the size ('valid' is rare)
        return x.numel() // x.shape[-3] * conv.out_channels
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
        x.shape[-2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return x.numel() // (x.shape[-3] * x.shape[-2] * x.shape[-1]) * conv.out_channels \
        * size[0] * size[1]


def _bn_forward(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    fold = bn.__dict__.get(FOLD_ATTR)
    if fold is not None and fold.active(x.numel()):
        return x  # the convolution before it applied it
    if (bn.training or not bn.track_running_stats or bn.running_mean is None
            or bn.weight is None or bn.weight.requires_grad or not _needs_graph(x)):
        return type(bn).forward(bn, x)
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return _ChannelAffine.apply(x, scale, shift)


def _clamp_forward(act: nn.Module, low: float, high: Optional[float],
                   x: torch.Tensor) -> torch.Tensor:
    if not _needs_graph(x):
        return type(act).forward(act, x)
    return _MaskedClamp.apply(x, low, high, bool(getattr(act, 'inplace', False)))


# ---------------------------------------------------------------- patching
def _fast_method(module: nn.Module) -> Optional[Tuple[str, functools.partial]]:
    """``(method name, fast method)`` for ``module``, or None where none applies."""
    cls = type(module)
    if isinstance(module, nn.Conv2d) and cls._conv_forward is nn.Conv2d._conv_forward:
        return '_conv_forward', functools.partial(_conv_forward, module)
    if cls.forward in BN_FORWARDS and isinstance(module, nn.BatchNorm2d) and module.affine:
        return 'forward', functools.partial(_bn_forward, module)
    if cls in CLAMPS:
        return 'forward', functools.partial(_clamp_forward, module, *CLAMPS[cls])
    return None


FAST_METHODS = (_conv_forward, _bn_forward, _clamp_forward)


def enable_frozen_fast_path(backbone: nn.Module, fold_bn: bool = True,
                            sample: Optional[torch.Tensor] = None) -> FastPathReport:
    """Give the eligible layers of ``backbone`` the fast forward (see module docstring).

    Args:
        backbone: the module (a frozen backbone).
        fold_bn: fold eval-mode BNs into their convolutions. Default True.
        sample: an input the backbone takes, for the dry forwards that find and check
            the folds. Default: the first of the block finder's sample inputs that runs
            (none runs: nothing is folded).
    """
    disable_frozen_fast_path(backbone)
    report = FastPathReport()
    names = {module: name for name, module in backbone.named_modules()}
    lists = dict(zip(FAST_METHODS, (report.convs, report.affine_norms, report.activations)))
    for module, name in names.items():
        fast = _fast_method(module)
        if fast is not None:
            # an instance attribute (not a submodule): the state dict is unchanged
            setattr(module, *fast)
            lists[fast[1].func].append(name)
    if fold_bn and report.convs and report.affine_norms:
        sample = working_input(backbone) if sample is None else sample
        if sample is not None:
            _fold_pairs(backbone, sample, names, report)
    return report


def disable_frozen_fast_path(backbone: nn.Module) -> None:
    """Give every layer of ``backbone`` its own forward back (undo the fast path)."""
    for module in backbone.modules():
        for attr in ('forward', '_conv_forward'):
            method = module.__dict__.get(attr)
            if isinstance(method, functools.partial) and method.func in FAST_METHODS:
                delattr(module, attr)
        module.__dict__.pop(FOLD_ATTR, None)


def _fold_pairs(backbone: nn.Module, sample: torch.Tensor, names: Dict[nn.Module, str],
                report: FastPathReport) -> None:
    """Find (convolution -> BN) pairs by a dry forward and keep those that check."""
    candidates = _conv_bn_pairs(backbone, sample, report)
    parents = {}
    for name, module in backbone.named_modules():
        for child, sub in module.named_children():
            parents.setdefault(sub, (module, child))
    folds = []
    for conv, bn in candidates:
        fold = _Fold(conv, bn, *parents[bn])
        conv.__dict__[FOLD_ATTR] = bn.__dict__[FOLD_ATTR] = fold
        folds.append(fold)
    for fold in _failing(backbone, sample, folds):
        del fold.conv.__dict__[FOLD_ATTR], fold.bn.__dict__[FOLD_ATTR]
        report.unfolded[names[fold.bn]] = 'differs from the plain layers (its input is used ' \
                                          'elsewhere too)'
        folds.remove(fold)
    for fold in folds:
        bn_name = names[fold.bn]
        report.folded[bn_name] = names[fold.conv]
        report.affine_norms.remove(bn_name)


def _conv_bn_pairs(backbone: nn.Module, sample: torch.Tensor,
                   report: FastPathReport) -> List[Tuple[nn.Module, nn.Module]]:
    """Pairs where a BN2d (called once) reads the output of a Conv2d (called once, through
    its fast ``_conv_forward``)."""
    modules = dict(backbone.named_modules())
    convs = {modules[n] for n in report.convs}
    bns = {modules[n] for n in report.affine_norms}
    outputs: Dict[int, Tuple[nn.Module, torch.Tensor]] = {}
    calls: Dict[nn.Module, int] = {}
    reads: Dict[nn.Module, nn.Module] = {}

    def after_conv(module, args, output):
        calls[module] = calls.get(module, 0) + 1
        outputs[id(output)] = (module, output)  # the tensor kept: its id stays unique

    def before_bn(module, args):
        calls[module] = calls.get(module, 0) + 1
        source = outputs.get(id(args[0]))
        if source is not None and source[1] is args[0]:
            reads[module] = source[0]

    global _CONVS_RUN
    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_bn) for m in bns]
    _CONVS_RUN = ran = set()
    try:
        _eval_forward(backbone, sample)
    finally:
        _CONVS_RUN = None
        for handle in handles:
            handle.remove()
    return [(conv, bn) for bn, conv in reads.items()
            if calls.get(bn) == 1 and calls.get(conv) == 1 and conv in ran]


def _failing(backbone: nn.Module, sample: torch.Tensor, folds: List[_Fold]) -> List[_Fold]:
    """The folds that change the output of any module (but the folded convolutions), on
    randomised BN statistics (the defaults, mean 0 and variance 1, would hide a fold that
    is wrong): all at once, and one by one if that fails."""
    if not folds:
        return []
    bns = [fold.bn for fold in folds]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    generator = torch.Generator().manual_seed(0)

    def uniform(t, low, high):
        return torch.rand(t.shape, generator=generator).to(t) * (high - low) + low
    try:
        with torch.no_grad():
            for bn in bns:
                bn.running_mean.copy_(uniform(bn.running_mean, -0.5, 0.5))
                bn.running_var.copy_(uniform(bn.running_var, 0.5, 2.0))
                bn.weight.copy_(uniform(bn.weight, 0.5, 1.5))
                bn.bias.copy_(uniform(bn.bias, -0.5, 0.5))
        layers = {m for fold in folds for m in (fold.conv, fold.bn)}
        failing = [] if _folds_match(backbone, sample, folds, layers) else [
            fold for fold in folds if not _folds_match(backbone, sample, [fold], layers)]
    finally:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
    return failing


def _folds_match(backbone: nn.Module, sample: torch.Tensor, folds: List[_Fold],
                 layers: set) -> bool:
    """Does every module but ``layers`` (hooks on them would turn folding off) give the
    same output with only ``folds`` folded as with none?"""
    records = {fold: (fold.conv.__dict__.pop(FOLD_ATTR), fold.bn.__dict__.pop(FOLD_ATTR))
               for fold in _all_folds(backbone)}
    try:
        want = _module_outputs(backbone, sample, layers)
        for fold in folds:
            fold.conv.__dict__[FOLD_ATTR] = fold.bn.__dict__[FOLD_ATTR] = fold
        got = _module_outputs(backbone, sample, layers)
    finally:
        for fold in folds:
            fold.conv.__dict__.pop(FOLD_ATTR, None)
            fold.bn.__dict__.pop(FOLD_ATTR, None)
        for fold in records:
            fold.conv.__dict__[FOLD_ATTR] = fold.bn.__dict__[FOLD_ATTR] = fold
    return got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)


def _module_outputs(backbone: nn.Module, sample: torch.Tensor,
                    skip: set) -> Dict[str, torch.Tensor]:
    """The first tensor output of every module but ``skip`` in one eval forward."""
    outputs: Dict[str, torch.Tensor] = {}

    def record(name, module, args, output):
        while isinstance(output, (tuple, list)) and output:
            output = output[0]
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            outputs[f'{name}#{len(outputs)}'] = output.detach().float().clone()
    handles = [module.register_forward_hook(functools.partial(record, name))
               for name, module in backbone.named_modules() if module not in skip]
    try:
        _eval_forward(backbone, sample)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _all_folds(backbone: nn.Module) -> List[_Fold]:
    seen = []
    for module in backbone.modules():
        fold = module.__dict__.get(FOLD_ATTR)
        if fold is not None and fold.conv is module:
            seen.append(fold)
    return seen


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(
        (a - b).norm() <= FOLD_CHECK_RTOL * b.norm() + 1e-12)


def _eval_forward(backbone: nn.Module, sample: torch.Tensor) -> List[torch.Tensor]:
    """The backbone's tensor outputs in eval mode without autograd (modes restored)."""
    modes = {m: m.training for m in backbone.modules()}
    try:
        backbone.eval()
        with torch.no_grad():
            out = backbone(sample)
    finally:
        for module, mode in modes.items():
            module.training = mode
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [t.float() for t in flat if isinstance(t, torch.Tensor)]
