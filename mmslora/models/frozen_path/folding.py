"""Eval-mode BatchNorms folded into the convolution that produced their input.

A frozen eval-mode BN is ``y = x s + t`` with ``s = gamma / sqrt(var + eps)`` and
``t = beta - mean s``; after a convolution ``x = W * z + b`` it folds into it:
``W' = W s``, ``b' = b s + t``, and the BN passes its input through.

:func:`find_folds` finds the (convolution -> BN) pairs by a dry forward (which BN reads
which convolution's output) and keeps those that a second dry forward, with randomised
BN statistics, shows to change no module's output. :class:`Fold` holds one pair and
decides at every forward, from the live modules, whether it is folded now.
"""

import contextlib
import functools
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmslora.compat.torch import is_compiling, is_exporting
from ..dry_run import dry_run
from .functions import scaled

__all__ = ['FOLD_ATTR', 'Fold', 'find_folds', 'eval_forward']

#: attribute (in the module's ``__dict__``, not a submodule) with a layer's fold record
FOLD_ATTR = '_mmslora_fold'
#: a folded pair must match the plain pair to this relative error (random statistics)
FOLD_CHECK_RTOL = 1e-4


@dataclass(eq=False)
class Fold:
    """A BN folded into the convolution before it; both layers hold this record in
    their ``__dict__`` under :data:`FOLD_ATTR`.

    ``cache`` keeps the folded inference weights between eager forwards without
    autograd, keyed on the storage and version of every tensor they come from, so a
    weight load or an in-place update takes effect at once.
    """

    conv: nn.Conv2d
    bn: _BatchNorm
    parent: nn.Module  # the module that holds the BN as ``child``
    child: str
    cache: Optional[Tuple[tuple, torch.Tensor, torch.Tensor]] = None

    def attach(self) -> None:
        self.conv.__dict__[FOLD_ATTR] = self.bn.__dict__[FOLD_ATTR] = self

    def detach(self) -> None:
        self.conv.__dict__.pop(FOLD_ATTR, None)
        self.bn.__dict__.pop(FOLD_ATTR, None)

    def active(self, out_numel: int) -> bool:
        """Fold now? Decided from the live modules at every forward: not with a BN in
        training mode, a trainable BN weight, a hook on either layer, or a BN replaced
        in its parent (``SyncBatchNorm`` conversion). Under autograd the folded weight is
        scaled in forward and again in backward: it pays where the convolution's output
        (``out_numel`` elements, which the BN would scale twice) is at least as large as
        its weight; elsewhere the BN runs as an affine map (equally free of saved
        inputs). While an exporter records (:func:`~mmslora.compat.torch.is_exporting`)
        nothing is folded: the graph gets the plain convolution and BN, which the ONNX
        exporters fold themselves, with the weights under their own names."""
        conv, bn = self.conv, self.bn
        if is_exporting() or (torch.is_grad_enabled() and out_numel < conv.weight.numel()):
            return False
        return (
            not bn.training
            and not bn.weight.requires_grad
            and FOLD_ATTR in conv.__dict__
            and FOLD_ATTR in bn.__dict__
            and getattr(self.parent, self.child, None) is bn
            and not (
                conv._forward_hooks
                or conv._forward_pre_hooks
                or bn._forward_hooks
                or bn._forward_pre_hooks
            )
        )

    def training_terms(
        self, conv_bias: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``s`` (no grad) and ``b' = b s + beta - mean s`` (with autograd: BitFit
        trains the biases through it). In eager mode it drops the inference cache (no
        stale copy of the weights kept through training); under ``torch.compile`` it
        leaves it alone (reading it would make the graph depend on it)."""
        if not is_compiling() and self.cache is not None:
            self.cache = None
        bn = self.bn
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv_bias is not None:
            bias = bias + conv_bias * scale
        return scale, bias

    def inference_terms(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(W s, b')`` without autograd; in eager mode kept until a tensor they come
        from changes. Under ``torch.compile`` computed in the graph (no cache)."""
        if is_compiling():
            scale, bias = self.training_terms(self.conv.bias)
            return scaled(self.conv.weight, scale), bias  # computed in the graph
        conv, bn = self.conv, self.bn
        key = tuple(
            None if t is None else (t.data_ptr(), t._version, t.dtype, t.device)
            for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        )
        if self.cache is None or self.cache[0] != key:
            scale, bias = self.training_terms(conv.bias)
            self.cache = (key, scaled(conv.weight, scale), bias)
        return self.cache[1], self.cache[2]


def folds_in(backbone: nn.Module) -> List[Fold]:
    """Every fold attached in ``backbone``, once each."""
    return [
        m.__dict__[FOLD_ATTR]
        for m in backbone.modules()
        if FOLD_ATTR in m.__dict__ and m.__dict__[FOLD_ATTR].conv is m
    ]


def find_folds(
    backbone: nn.Module, sample: torch.Tensor, convs: Set[nn.Module], bns: Set[nn.Module]
) -> Tuple[List[Fold], List[Fold]]:
    """``(kept, refused)``: the (convolution -> BN) pairs among ``convs`` (which run the
    fast ``_conv_forward``) and ``bns`` where the BN (called once) reads the output of
    the convolution (called once), split by the randomised-statistics check. The kept
    folds are attached."""
    parents = {}
    for module in backbone.modules():
        for child, sub in module.named_children():
            parents.setdefault(sub, (module, child))
    folds = [
        Fold(conv, bn, *parents[bn]) for conv, bn in _conv_bn_pairs(backbone, sample, convs, bns)
    ]
    for fold in folds:
        fold.attach()
    refused = _failing(backbone, sample, folds)
    for fold in refused:
        fold.detach()
    return [fold for fold in folds if fold not in refused], refused


@contextlib.contextmanager
def _recording_runs(convs: Set[nn.Module]) -> Iterator[set]:
    """Within the context, the set of ``convs`` whose fast ``_conv_forward`` ran (a
    subclass whose forward calls ``F.conv2d`` itself, as mmcv's adaptive padding does,
    would skip a fold made for it)."""
    ran: set = set()
    fast = {conv: conv.__dict__['_conv_forward'] for conv in convs}
    for conv, method in fast.items():
        conv._conv_forward = functools.partial(_recorded, ran, conv, method)
    try:
        yield ran
    finally:
        for conv, method in fast.items():
            conv._conv_forward = method


def _recorded(ran: set, conv: nn.Module, method, *args):
    ran.add(conv)
    return method(*args)


def _conv_bn_pairs(
    backbone: nn.Module, sample: torch.Tensor, convs: Set[nn.Module], bns: Set[nn.Module]
) -> List[Tuple[nn.Module, nn.Module]]:
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

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_bn) for m in bns]
    try:
        with _recording_runs(convs) as ran:
            eval_forward(backbone, sample)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (conv, bn)
        for bn, conv in reads.items()
        if calls.get(bn) == 1 and calls.get(conv) == 1 and conv in ran
    ]


def _failing(backbone: nn.Module, sample: torch.Tensor, folds: List[Fold]) -> List[Fold]:
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
        failing = (
            []
            if _folds_match(backbone, sample, folds, layers)
            else [fold for fold in folds if not _folds_match(backbone, sample, [fold], layers)]
        )
    finally:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
    return failing


def _folds_match(backbone: nn.Module, sample: torch.Tensor, folds: List[Fold], layers: set) -> bool:
    """Does every module but ``layers`` (hooks on them would turn folding off) give the
    same output with only ``folds`` folded as with none?"""
    attached = folds_in(backbone)
    for fold in attached:
        fold.detach()
    try:
        want = _module_outputs(backbone, sample, layers)
        for fold in folds:
            fold.attach()
        got = _module_outputs(backbone, sample, layers)
    finally:
        for fold in folds:
            fold.detach()
        for fold in attached:
            fold.attach()
    return got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)


def _module_outputs(
    backbone: nn.Module, sample: torch.Tensor, skip: set
) -> Dict[str, torch.Tensor]:
    """The first tensor output of every module but ``skip`` in one eval forward."""
    outputs: Dict[str, torch.Tensor] = {}

    def record(name, module, args, output):
        while isinstance(output, (tuple, list)) and output:
            output = output[0]
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            outputs[f'{name}#{len(outputs)}'] = output.detach().float().clone()

    handles = [
        module.register_forward_hook(functools.partial(record, name))
        for name, module in backbone.named_modules()
        if module not in skip
    ]
    try:
        eval_forward(backbone, sample)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).norm() <= FOLD_CHECK_RTOL * b.norm() + 1e-12)


def eval_forward(backbone: nn.Module, sample: torch.Tensor) -> None:
    """One forward of ``backbone`` in eval mode without autograd (modes restored)."""
    with dry_run(backbone):
        backbone(sample)
