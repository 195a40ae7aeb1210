"""The fused MSLoRA forward: ``F + Proj(F) * Trans(F)`` in few, large operations.

:func:`fused_mslora` computes what :class:`~mmslora.models.MSLoRAAdapter` computes layer
by layer, with the same parameters and the same ``Trans`` chain
(:meth:`~mmslora.models.MultiScaleTransform.chain`, one definition for both paths),
equal up to float rounding:

* the four grouped 1x1 convolutions are batched matrix products over (batch, group),
  and ``Reduce`` and ``Proj.down``, which both read ``F``, are one product;
* ``Expand``'s bias is added inside its product (a row of ones appended to its input);
* ``F + Proj * gate`` is one :func:`gated_residual`, which under autograd keeps only
  D-channel maps for backward and recomputes the two C-channel maps there.

In eager training the D-channel ``Trans`` chain runs in a ``torch.utils.checkpoint``
region (only its input is kept). Under ``torch.compile`` it does not: the compiler's
partitioner decides what to keep and what to recompute, and the whole adapter (the
custom backward of :class:`GatedResidual` included) compiles into one graph.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmslora.compat.torch import is_compiling, records_autograd

__all__ = ['fused_mslora', 'gated_residual', 'nearest_upsample', 'GatedResidual']


def nearest_upsample(t: torch.Tensor, stride: int, size: Sequence[int]) -> torch.Tensor:
    """Each value of (B, C, h, w) ``t`` repeated over a ``stride`` x ``stride`` window,
    cropped to ``size`` (the inverse layout of ``avg_pool2d(.., stride, ceil_mode=True)``)."""
    if stride == 1:
        return t
    b, c, h, w = t.shape
    t = t[:, :, :, None, :, None].expand(b, c, h, stride, w, stride)
    return t.reshape(b, c, h * stride, w * stride)[:, :, : size[0], : size[1]]


def grouped_weight(conv: torch.nn.Conv2d, groups: int) -> torch.Tensor:
    """The (out, in / groups, 1, 1) weight of a grouped 1x1 convolution as
    (groups, out / groups, in / groups) matrices."""
    out, per_group = conv.weight.shape[:2]
    return conv.weight.view(groups, out // groups, per_group)


class GatedResidual(torch.autograd.Function):
    """``F + (W_up @ p) * sigmoid(W_e @ t)`` per (batch, group), for autograd.

    Shapes: ``x`` (B, C, H, W); ``p`` (B, G, D/G, HW) and ``t`` (B, G, D/G + 1, HW)
    D-channel maps; ``w_up`` (G, C/G, D/G); ``w_e`` (G, C/G, D/G + 1). Backward keeps
    ``p``, ``t`` and the weights, and recomputes the two C-channel maps ``W_up @ p``
    and the gate (two matrix products and a sigmoid more per step, two C-channel maps
    less memory per adapter). In-place operations touch only tensors made here, so
    ``torch.compile`` traces forward and backward.
    """

    @staticmethod
    def forward(ctx, x, p, t, w_up, w_e):
        up = torch.matmul(w_up, p)
        gate = torch.matmul(w_e, t).sigmoid_()
        # under autocast the products ran in its dtype: keep the operands in it, so
        # that backward (which runs outside autocast) multiplies what forward did
        ctx.save_for_backward(*(v.to(up.dtype) for v in (p, t, w_up, w_e)))
        return torch.addcmul(x, up.view(x.shape), gate.view(x.shape))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, t, w_up, w_e = ctx.saved_tensors
        g = grad.to(p.dtype).reshape(p.shape[0], w_up.shape[0], w_up.shape[1], p.shape[-1])
        up = torch.matmul(w_up, p)
        gate = torch.matmul(w_e, t).sigmoid_()
        grad_up = g * gate
        # d/dz of up * sigmoid(z): grad * up * gate * (1 - gate), in up's memory
        grad_z = torch.ops.aten.sigmoid_backward(up.mul_(g), gate)
        del up, gate
        grads = [grad if ctx.needs_input_grad[0] else None, None, None, None, None]
        if ctx.needs_input_grad[1]:
            grads[1] = torch.matmul(w_up.transpose(1, 2), grad_up)
        if ctx.needs_input_grad[3]:
            grads[3] = torch.matmul(grad_up, p.transpose(2, 3)).sum(0)
        if ctx.needs_input_grad[2]:
            grads[2] = torch.matmul(w_e.transpose(1, 2), grad_z)
        if ctx.needs_input_grad[4]:
            grads[4] = torch.matmul(grad_z, t.transpose(2, 3)).sum(0)
        return tuple(grads)


def gated_residual(
    x: torch.Tensor, p: torch.Tensor, t: torch.Tensor, w_up: torch.Tensor, w_e: torch.Tensor
) -> torch.Tensor:
    """``x + (w_up @ p) * sigmoid(w_e @ t)``, shapes as in :class:`GatedResidual`.

    Under autograd :class:`GatedResidual`; without it, two C-channel maps are allocated
    and the rest runs in place on them (allocation is a large part of the cost of
    element-wise work on CPU).
    """
    if records_autograd():
        return GatedResidual.apply(x, p.contiguous(), t, w_up, w_e)
    up = torch.matmul(w_up, p)
    gate = torch.matmul(w_e, t).sigmoid_()
    return up.mul_(gate).view(x.shape).add_(x)


def fused_mslora(adapter, x: torch.Tensor) -> torch.Tensor:
    """``F + Proj(F) * Trans(F)`` of a ``combine='product'`` MSLoRAAdapter on (B, C, H, W)
    ``x``, with every other switch: without channel or spatial attention those steps of
    the chain are skipped; with ``trans_stride`` the D-channel output of ``Reduce`` is
    pooled (``Reduce`` is linear, so this is ``Reduce`` of the pooled map) and the
    D-channel map before ``Expand`` upsampled (nearest upsampling commutes with
    ``Expand`` and the sigmoid); ``init='zero_scale'``'s ``scale`` is folded into the
    up-projection (``diag(scale) W_up``).
    """
    trans, proj, groups = adapter.trans, adapter.proj, adapter.groups
    b, c, h, w = x.shape
    d = trans.reduce.out_channels
    dg, cg = d // groups, c // groups
    # Reduce and Proj.down in one product: (G, 2 D/G, C/G) @ (B, G, C/G, HW)
    both = torch.cat(
        [grouped_weight(trans.reduce, groups), grouped_weight(proj.down, groups)], dim=1
    )
    hidden = torch.matmul(both, x.reshape(b, groups, cg, h * w))  # (B, G, 2 D/G, HW)
    t = hidden[:, :, :dg].reshape(b, d, h, w)
    p = hidden[:, :, dg:]  # (B, G, D/G, HW), a strided view
    if trans.stride > 1:
        t = F.avg_pool2d(t, trans.stride, ceil_mode=True)
    if records_autograd() and not adapter.with_cp and not is_compiling():
        t = checkpoint(trans.chain, t, use_reentrant=False)  # only its input is kept
    else:
        t = trans.chain(t)
    t = nearest_upsample(t, trans.stride, (h, w))
    # gate = sigmoid(Expand(t)), the bias inside the product: [W | b] @ [t; 1] per group
    # (a D-channel copy of t instead of a C-channel pass for the bias)
    expand = torch.cat(
        [grouped_weight(trans.expand, groups), trans.expand.bias.view(groups, cg, 1)], dim=2
    )
    t = torch.cat(
        [t.reshape(b, groups, dg, h * w), t.new_ones(1, 1, 1, 1).expand(b, groups, 1, h * w)], dim=2
    )
    w_up = grouped_weight(proj.up, groups)
    if adapter.scale is not None:  # init='zero_scale': diag(scale) W_up
        w_up = w_up * adapter.scale.view(groups, cg, 1)
    return gated_residual(x, p, t, w_up, expand)
