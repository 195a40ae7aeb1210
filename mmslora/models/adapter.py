"""The MSLoRA adapter module (Yang and Agam, arXiv 2511.12400).

Inserted after a frozen block with output ``F`` of shape (B, C, H, W)::

    F_hat = F + H(F),        H(F) = Proj(F) * Trans(F)        (pointwise product)

``Proj`` is the efficient low-rank projection branch: a grouped 1x1 convolution that
projects C -> D, then a grouped 1x1 convolution back D -> C (G groups each), linear
in ``F`` as in LoRA. ``Trans`` is the multi-scale nonlinear transformation branch that
modulates channel and spatial attention and produces the weights by which ``Proj(F)``
is multiplied, so the module *reweights* the frozen feature instead of re-tuning the
weights that produced it.

What the paper fixes and what mmslora chose
-------------------------------------------
The paper states the equations above, the grouped 1x1 low-rank ``Proj`` (C -> D -> C
with G groups), that ``Trans`` uses multi-scale convolutions jointly modulating spatial
and channel attention, and that the adapter follows every block. It leaves the exact
layers of ``Trans`` and the defaults open in the text available to us, so mmslora
chose (each an argument below)::

    t = GN(Reduce(F))                        Reduce: grouped 1x1, C -> D
    t = GELU(t + mean_k DWConv_k(t))         k in kernel_sizes = (3, 5, 7), depthwise
    t = t * sigmoid(W2 GELU(W1 avgpool(t)))  channel attention, D -> D/r -> D
    t = t * sigmoid(Conv_7x7([mean_c t; max_c t]))   spatial attention
    Trans(F) = sigmoid(Expand(t))            Expand: grouped 1x1, D -> C

so ``Trans(F)`` is a gate in (0, 1) and ``H`` is a gated linear unit of ``F``.

Implementation: ``LowRankProjection`` and ``MultiScaleTransform`` compute layer by
layer, as written above (``MSLoRAAdapter.residual`` uses them). ``MSLoRAAdapter.forward``
computes the same ``F + Proj(F) * Trans(F)`` with the same parameters in fewer, larger
operations (:func:`fused_mslora`), about 1.5-2x faster on CPU; it equals the
layer-by-layer result up to float rounding (``tests/test_models/test_adapter.py``).
Defaults ``D=64``, ``G=8`` keep the adapters under 5% of the backbone for R-50,
Swin-T and ViT-B. The up-projection of ``Proj`` starts at zero, so ``H(F) = 0`` and
the adapted network equals the pretrained one at step 0; because of the product,
``Trans`` receives its first non-zero gradient on the second step.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmslora.registry import MODELS
from .base import BlockAdapter


def _check_divisible(name: str, value: int, groups: int) -> None:
    if value % groups != 0:
        raise ValueError(
            f'MSLoRAAdapter: {name}={value} is not divisible by groups={groups}; '
            f'choose `groups` that divides both the block channels and `hidden_dim` '
            f'(for example a power of two such as 4 or 8), or leave strict_groups=False '
            f'to use the largest divisor that fits.')


def fitting_groups(channels: int, hidden_dim: int, groups: int) -> int:
    """The largest number of groups <= ``groups`` that divides both C and D."""
    common = math.gcd(channels, hidden_dim)
    return max(g for g in range(1, min(groups, common) + 1) if common % g == 0)


class LowRankProjection(nn.Module):
    """``Proj``: grouped 1x1 convolutions C -> D -> C, (B, C, H, W) -> (B, C, H, W).

    The up-projection is zero-initialised so the branch outputs zero at start.
    """

    def __init__(self, channels: int, hidden_dim: int, groups: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden_dim, 1, groups=groups, bias=False)
        self.up = nn.Conv2d(hidden_dim, channels, 1, groups=groups, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class MultiScaleTransform(nn.Module):
    """``Trans``: multi-scale channel/spatial reweighting, (B, C, H, W) -> gate (B, C, H, W)."""

    def __init__(self, channels: int, hidden_dim: int, groups: int,
                 kernel_sizes: Sequence[int] = (3, 5, 7), reduction: int = 4,
                 spatial_kernel: int = 7) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden_dim, 1, groups=groups, bias=False)
        self.norm = nn.GroupNorm(1, hidden_dim)
        self.multi_scale = nn.ModuleList(
            nn.Conv2d(hidden_dim, hidden_dim, k, padding=k // 2, groups=hidden_dim)
            for k in kernel_sizes)
        self.act = nn.GELU()
        squeezed = max(hidden_dim // reduction, 1)
        self.channel_attn = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(hidden_dim, squeezed, 1),
            nn.GELU(),
            nn.Conv2d(squeezed, hidden_dim, 1),
            nn.Sigmoid())
        self.spatial_attn = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)
        self.expand = nn.Conv2d(hidden_dim, channels, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.reduce(x))
        t = self.act(t + sum(conv(t) for conv in self.multi_scale) / len(self.multi_scale))
        t = t * self.channel_attn(t)
        pooled = torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)
        t = t * torch.sigmoid(self.spatial_attn(pooled))
        return torch.sigmoid(self.expand(t))


def _grouped_weight(conv: nn.Conv2d, groups: int) -> torch.Tensor:
    """The (out, in / groups, 1, 1) weight of a grouped 1x1 convolution as
    (groups, out / groups, in / groups) matrices."""
    out, per_group = conv.weight.shape[:2]
    return conv.weight.view(groups, out // groups, per_group)


def fused_multi_scale_kernel(trans: MultiScaleTransform) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel (D, 1, K, K) and bias (D,) of one depthwise convolution equal to
    ``t + mean_k DWConv_k(t)``: the zero-padded kernels averaged, plus 1 at the centre
    (the residual); K is the largest kernel size."""
    convs = trans.multi_scale
    size = max(conv.kernel_size[0] for conv in convs)
    kernel = sum(F.pad(conv.weight, [(size - conv.kernel_size[0]) // 2] * 4)
                 for conv in convs) / len(convs)
    centre = torch.zeros_like(kernel[:1])
    centre[..., size // 2, size // 2] = 1
    return kernel + centre, sum(conv.bias for conv in convs) / len(convs)


class _GatedResidual(torch.autograd.Function):
    """``F + (W_up @ p) * sigmoid(W_e @ t)`` per (batch, group), for autograd.

    ``p`` (B, G, D/G, HW) and ``t`` (B, G, D/G + 1, HW) are D-channel maps; the two
    C-channel maps ``W_up @ p`` and the gate are recomputed in backward instead of
    being kept from forward to backward (two bmm and a sigmoid more per step, two
    C-channel maps less memory per adapter).
    """

    @staticmethod
    def forward(ctx, x, p, t, w_up, w_e):
        ctx.save_for_backward(p, t, w_up, w_e)
        up = torch.matmul(w_up, p).view(x.shape)
        gate = torch.matmul(w_e, t).sigmoid_().view(x.shape)
        return torch.addcmul(x, up, gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, t, w_up, w_e = ctx.saved_tensors
        g = grad.reshape(p.shape[0], w_up.shape[0], w_up.shape[1], p.shape[-1])
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


def fused_mslora(adapter: 'MSLoRAAdapter', x: torch.Tensor) -> torch.Tensor:
    """``F + Proj(F) * Trans(F)`` with the parameters of ``adapter``, in fewer operations
    than layer by layer (same math, equal up to float rounding):

    * the four grouped 1x1 convolutions are batched matrix products over
      (batch, group) (grouped convolutions with few channels per group are slow on
      CPU), and ``Reduce`` and ``Proj.down``, which both read ``F``, are one product;
    * ``t + mean_k DWConv_k(t)`` is one depthwise convolution
      (:func:`fused_multi_scale_kernel`), run in channels-last memory format under
      autograd (its weight gradient is about 2x faster there on CPU);
    * the channel attention's 1x1 convolutions on the pooled vector are linear maps;
    * ``Expand``'s bias is added inside the product (a row of ones appended to its
      input), and ``F + Proj * gate`` is one ``addcmul``; without autograd the
      C-channel intermediates are updated in place, so only two of them are allocated
      (memory allocation is a large part of the cost of element-wise operations on
      CPU); under autograd :class:`_GatedResidual` keeps only D-channel maps for
      backward and recomputes the two C-channel ones there.
    """
    trans, proj = adapter.trans, adapter.proj
    b, c, h, w = x.shape
    groups = adapter.groups
    d = trans.norm.num_channels
    dg, cg = d // groups, c // groups
    # Reduce and Proj.down in one product: (G, 2 D/G, C/G) @ (B, G, C/G, HW)
    both = torch.cat([_grouped_weight(trans.reduce, groups),
                      _grouped_weight(proj.down, groups)], dim=1)
    hidden = torch.matmul(both, x.reshape(b, groups, cg, h * w))  # (B, G, 2 D/G, HW)
    t = hidden[:, :, :dg].reshape(b, d, h, w)
    p = hidden[:, :, dg:]  # (B, G, D/G, HW), a strided view

    t = F.group_norm(t, 1, trans.norm.weight, trans.norm.bias, trans.norm.eps)
    grad = torch.is_grad_enabled()
    if grad:
        t = t.contiguous(memory_format=torch.channels_last)
    kernel, bias = fused_multi_scale_kernel(trans)
    t = trans.act(F.conv2d(t, kernel, bias, padding=kernel.shape[-1] // 2, groups=d))
    squeeze, act, excite = trans.channel_attn[1], trans.channel_attn[2], trans.channel_attn[3]
    a = act(F.linear(t.mean((2, 3)), squeeze.weight.flatten(1), squeeze.bias))
    a = torch.sigmoid(F.linear(a, excite.weight.flatten(1), excite.bias))
    t = t * a[:, :, None, None]
    pooled = torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)
    t = t * torch.sigmoid(trans.spatial_attn(pooled))

    # gate = sigmoid(Expand(t)), the bias inside the product: [W | b] @ [t; 1] per group
    # (a D-channel copy of t instead of a C-channel pass for the bias)
    expand = torch.cat([_grouped_weight(trans.expand, groups),
                        trans.expand.bias.view(groups, cg, 1)], dim=2)
    t = torch.cat([t.reshape(b, groups, dg, h * w), t.new_ones(1, 1, 1, 1).expand(
        b, groups, 1, h * w)], dim=2)
    w_up = _grouped_weight(proj.up, groups)
    if grad:
        # keep p alone (not the whole `hidden`) for backward
        return _GatedResidual.apply(x, p.contiguous(), t, w_up, expand)
    gate = torch.matmul(expand, t).sigmoid_().view(b, c, h, w)
    up = torch.matmul(w_up, p).view(b, c, h, w)
    return torch.addcmul(x, up, gate, out=up)  # in place: no autograd to keep `up` for


@MODELS.register_module()
class MSLoRAAdapter(BlockAdapter):
    """MSLoRA: ``F_hat = F + Proj(F) * Trans(F)`` on a (B, C, H, W) feature map.

    A :class:`~mmslora.models.base.BlockAdapter`. See the module docstring for the
    equations and for which details are the paper's and which are mmslora's choices.

    Args:
        channels (int): C, channels of the block output it adapts.
        hidden_dim (int): D, the low-rank width of both branches. Default 64.
        groups (int): G, groups of the 1x1 projections. Default 8. Where G does not
            divide both C and D, the largest divisor of both below G is used (recorded in
            ``adjustment`` and in the parameter report), unless ``strict_groups``.
        kernel_sizes (Sequence[int]): odd depthwise kernel sizes of the multi-scale
            transform. Default (3, 5, 7).
        reduction (int): squeeze ratio of the channel attention. Default 4.
        spatial_kernel (int): odd kernel of the spatial attention. Default 7.
        dropout (float): dropout on ``H(F)`` during training. Default 0.
        strict_groups (bool): refuse a ``groups`` that does not divide C and D
            instead of reducing it. Default False.
        with_cp (bool): gradient checkpointing of the adapter: keep only its input
            from forward to backward and recompute the rest there (less training
            memory, one more adapter forward per step; same values). Default False.
        init_cfg (dict, optional): MMEngine initialisation config. Default None.
            ``Proj``'s up-projection is set back to zero after it (the zero start).
    """

    zero_init = ('proj.up.weight', )

    def __init__(self, channels: int, hidden_dim: int = 64, groups: int = 8,
                 kernel_sizes: Sequence[int] = (3, 5, 7), reduction: int = 4,
                 spatial_kernel: int = 7, dropout: float = 0.0, strict_groups: bool = False,
                 with_cp: bool = False, init_cfg=None) -> None:
        super().__init__(channels, dropout=dropout, with_cp=with_cp, init_cfg=init_cfg)
        for name, value in (('hidden_dim', hidden_dim), ('groups', groups),
                            ('reduction', reduction)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'MSLoRAAdapter: {name} must be a positive int, got {value!r}.')
        if strict_groups:
            _check_divisible('channels', channels, groups)
            _check_divisible('hidden_dim', hidden_dim, groups)
        elif channels % groups or hidden_dim % groups:
            fitted = fitting_groups(channels, hidden_dim, groups)
            self.adjustment = (f'MSLoRAAdapter groups {groups} -> {fitted} (C={channels}, '
                               f'D={hidden_dim})')
            groups = fitted
        kernel_sizes = tuple(kernel_sizes)
        if not kernel_sizes:
            raise ValueError('MSLoRAAdapter: kernel_sizes is empty; give at least one odd '
                             'size, e.g. (3, 5, 7).')
        for k in kernel_sizes + (spatial_kernel,):
            if k < 1 or k % 2 == 0:
                raise ValueError(
                    f'MSLoRAAdapter: kernel size {k} must be odd and positive so the '
                    f'feature map keeps its size (use e.g. 3, 5 or 7).')
        self.groups = groups
        self.proj = LowRankProjection(channels, hidden_dim, groups)
        self.trans = MultiScaleTransform(channels, hidden_dim, groups, kernel_sizes,
                                         reduction, spatial_kernel)

    def residual_and_gate(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(H(F), Trans(F))`` for a (B, C, H, W) input, layer by layer."""
        gate = self.trans(x)
        return self.dropout(self.proj(x) * gate), gate

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``H(F) = Proj(F) * Trans(F)``, (B, C, H, W), layer by layer."""
        return self.residual_and_gate(x)[0]

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """``F + H(F)``: :func:`fused_mslora` (the same values in fewer operations), or
        layer by layer while dropout is active."""
        if self.training and not isinstance(self.dropout, nn.Identity):
            return x + self.residual(x)
        return fused_mslora(self, x)
