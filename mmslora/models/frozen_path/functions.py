"""The autograd functions of the frozen fast path: each keeps less than autograd would.

Every function is traceable by ``torch.compile``: non-tensor arguments are Python
values stored on ``ctx``, in-place work touches only tensors made in the function
or an input that is marked dirty and returned.
"""

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['FrozenConv2d', 'ChannelAffine', 'MaskedClamp', 'scaled']


def scaled(weight: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``weight`` (O, I, kh, kw) with output channel ``o`` multiplied by ``scale[o]``."""
    return weight if scale is None else weight * scale.view(-1, 1, 1, 1)


class FrozenConv2d(torch.autograd.Function):
    """``conv2d(x, W * s, b)`` keeping ``W`` and ``s`` (not ``x``) for backward.

    ``dL/dx = (W s)^T * dL/dy`` (the transposed convolution) and ``dL/db = sum dL/dy``
    where the bias trains (BitFit); ``W`` and ``s`` get no gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, scale, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight, scale)
        ctx.conv = (x.shape, x.stride(), stride, padding, dilation, groups)
        return F.conv2d(x, scaled(weight, scale), bias, stride, padding, dilation, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        shape, strides, stride, padding, dilation, groups = ctx.conv
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            # convolution_backward reads only the shape and strides of its input: an
            # uninitialised buffer laid out like ``x`` (never written, so never paged in)
            # runs the kernel autograd's own backward runs, and ``dL/dx`` comes out laid
            # out like ``x``, as autograd's does (a gradient in another layout than its
            # tensor sent torch 2.1's gelu_backward reading unwritten memory)
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device),
                scaled(weight, scale).to(grad.dtype),
                None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                (True, False, False),
            )[0]
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, None, grad_bias, None, None, None, None


class ChannelAffine(torch.autograd.Function):
    """``x s + t`` per channel of a (B, C, ...) map, keeping only ``s``."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(scale)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.to(x.dtype).view(view), x, scale.to(x.dtype).view(view))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        view = (1, -1) + (1,) * (grad.dim() - 2)
        dims = (0,) + tuple(range(2, grad.dim()))
        grad_x = grad * scale.to(grad.dtype).view(view) if ctx.needs_input_grad[0] else None
        grad_shift = grad.sum(dims) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_shift


class MaskedClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` keeping a bool mask of the unclamped elements; with
    ``inplace`` it clamps ``x`` itself and returns it (marked dirty)."""

    @staticmethod
    def forward(ctx, x, low, high, inplace):
        if inplace:
            x.clamp_(low, high)
            ctx.mark_dirty(x)
            out = x
        else:
            out = x.clamp(low, high)
        mask = out > low
        if high is not None:
            mask &= out < high
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        # a bool mask as uint8: float * uint8 is about as fast as threshold_backward,
        # float * bool about half as fast
        return grad * mask.view(torch.uint8), None, None, None
