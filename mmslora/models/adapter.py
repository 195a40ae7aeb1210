"""The MSLoRA adapter module (Yang and Agam, arXiv 2511.12400).

Inserted after a frozen block with output ``F`` of shape (B, C, H, W)::

    F_hat = F + H(F),        H(F) = Proj(F) * Trans(F)        (pointwise product)

``Proj`` (:class:`LowRankProjection`) is a grouped 1x1 convolution C -> D followed by a
grouped 1x1 convolution D -> C (G groups each), linear in ``F``. ``Trans``
(:class:`MultiScaleTransform`) is the multi-scale gate::

    t = GN(Reduce(F))                        Reduce: grouped 1x1, C -> D
    t = GELU(t + mean_k DWConv_k(t))         k in kernel_sizes, depthwise
    t = t * sigmoid(W2 GELU(W1 avgpool(t)))  channel attention, D -> D/r -> D
    t = t * sigmoid(Conv_k([mean_c t; max_c t]))     spatial attention
    Trans(F) = sigmoid(Expand(t))            Expand: grouped 1x1, D -> C

``Proj``'s up-projection starts at zero, so ``F_hat = F`` at step 0.
:meth:`MSLoRAAdapter.forward` computes the same values as the layer-by-layer
:meth:`MSLoRAAdapter.residual` in fewer operations
(:func:`~mmslora.models.fused_mslora.fused_mslora`), equal up to float rounding.

Which layers are the paper's and which are mmslora's choices, the ablation switches
and the derivation of each start: ``docs/mslora.md``.
"""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmslora.compat.torch import records_autograd
from mmslora.registry import MODELS
from .base import BlockAdapter
from .fused_mslora import fused_mslora, nearest_upsample

COMBINES = ('product', 'sum', 'proj', 'trans')
INITS = ('zero_up', 'zero_scale', 'gate_bias')
#: Expand's bias under init='gate_bias': sigmoid(log 9) = 0.9, the gate starts 90% open
OPEN_GATE_BIAS = math.log(9.0)


def _check_divisible(name: str, value: int, groups: int) -> None:
    if value % groups != 0:
        raise ValueError(
            f'MSLoRAAdapter: {name}={value} is not divisible by groups={groups}; '
            f'choose `groups` that divides both the block channels and `hidden_dim` '
            f'(for example a power of two such as 4 or 8), or leave strict_groups=False '
            f'to use the largest divisor that fits.'
        )


def fitting_groups(channels: int, hidden_dim: int, groups: int) -> int:
    """The largest number of groups <= ``groups`` that divides both C and D."""
    common = math.gcd(channels, hidden_dim)
    return max(g for g in range(1, min(groups, common) + 1) if common % g == 0)


def narrowed_width(channels: int, hidden_dim: int, groups: int, ratio: float) -> int:
    """``hidden_dim`` capped at ``ratio * channels``, rounded down to a multiple of
    ``groups`` and at least ``groups`` (so the groups stay as given).

    Raises:
        ValueError: ``ratio`` is not a number in (0, 1].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(
            f'MSLoRAAdapter: max_hidden_ratio must be a number in (0, 1], e.g. '
            f'0.5 (D at most half the block channels), got {ratio!r}.'
        )
    cap = max(groups, int(ratio * channels) // groups * groups)
    return min(hidden_dim, cap)


class LowRankProjection(nn.Module):
    """``Proj``: grouped 1x1 convolutions C -> D -> C, (B, C, H, W) -> (B, C, H, W).

    The up-projection is zero-initialised so the branch outputs zero at start.
    """

    def __init__(self, channels: int, hidden_dim: int, groups: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden_dim, 1, groups=groups, bias=False)
        self.up = nn.Conv2d(hidden_dim, channels, 1, groups=groups, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _spatial_attention(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    """``t * sigmoid(Conv([mean_c t; max_c t]))`` (CBAM's spatial attention)."""
    pooled = torch.cat([t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)], dim=1)
    return t * torch.sigmoid(conv(pooled))


class ChannelAttention(nn.Sequential):
    """Squeeze-excite gate of a (B, D, H, W) map: ``sigmoid(W2 GELU(W1 avgpool(t) + b1) +
    b2)``, (B, D, 1, 1). The layers are an ``nn.Sequential`` of pool, 1x1 convolution,
    GELU, 1x1 convolution and sigmoid (state-dict keys ``1.*`` and ``3.*``); ``forward``
    applies the two convolutions to the pooled vector as linear maps (the same values)."""

    def __init__(self, dim: int, squeezed: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, squeezed, 1),
            nn.GELU(),
            nn.Conv2d(squeezed, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        _, squeeze, act, excite, gate = self
        a = act(F.linear(t.mean((2, 3)), squeeze.weight.flatten(1), squeeze.bias))
        return gate(F.linear(a, excite.weight.flatten(1), excite.bias))[:, :, None, None]


class MultiScaleTransform(nn.Module):
    """``Trans``: multi-scale channel/spatial reweighting, (B, C, H, W) -> gate (B, C, H, W).

    ``channel_attention`` / ``spatial_attention`` False skip that step (its parameters
    are not built); ``sigmoid=False`` returns ``Expand``'s linear output instead of the
    gate; ``stride`` > 1 computes it on the map average-pooled by ``stride`` (ceil
    mode) and upsamples the result (:func:`nearest_upsample`) to the input's size.
    """

    def __init__(
        self,
        channels: int,
        hidden_dim: int,
        groups: int,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        reduction: int = 4,
        spatial_kernel: int = 7,
        channel_attention: bool = True,
        spatial_attention: bool = True,
        sigmoid: bool = True,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden_dim, 1, groups=groups, bias=False)
        self.norm = nn.GroupNorm(1, hidden_dim)
        self.multi_scale = nn.ModuleList(
            nn.Conv2d(hidden_dim, hidden_dim, k, padding=k // 2, groups=hidden_dim)
            for k in kernel_sizes
        )
        self.act = nn.GELU()
        squeezed = max(hidden_dim // reduction, 1)
        self.channel_attn = ChannelAttention(hidden_dim, squeezed) if channel_attention else None
        self.spatial_attn = (
            nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)
            if spatial_attention
            else None
        )
        self.expand = nn.Conv2d(hidden_dim, channels, 1, groups=groups)
        self.sigmoid, self.stride = sigmoid, stride

    def multi_scale_kernel(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Kernel (D, 1, K, K) and bias (D,) of one depthwise convolution equal to
        ``t + mean_k DWConv_k(t)``: the zero-padded kernels averaged, plus 1 at the
        centre (the residual); K is the largest kernel size.

        A k x k kernel ``w`` is zero-padded to K x K as ``E w E^T`` with ``E`` the
        (K, k) columns of the identity around the centre (products with exact ones and
        zeros: the padded values are ``w``'s, bitwise), and the centre is
        ``e e^T`` with ``e`` the middle row of the identity. Unlike ``F.pad`` and an
        indexed assignment, these keep the kernel's shape known to the TorchScript
        ONNX exporter, which refuses a convolution whose kernel shape it cannot infer
        (its ``Pad`` takes the padding as a computed tensor)."""
        convs = self.multi_scale
        size = max(conv.kernel_size[0] for conv in convs)
        eye = torch.eye(size, dtype=convs[0].weight.dtype, device=convs[0].weight.device)
        kernel = 0
        for conv in convs:
            k = conv.kernel_size[0]
            columns = eye[:, (size - k) // 2 : (size + k) // 2]  # E, (K, k)
            kernel = kernel + torch.matmul(torch.matmul(columns, conv.weight), columns.t())
        centre = eye[size // 2]
        bias = sum(conv.bias for conv in convs) / len(convs)
        return kernel / len(convs) + torch.outer(centre, centre), bias

    def chain(self, t: torch.Tensor) -> torch.Tensor:
        """``Trans`` between ``Reduce`` and ``Expand`` on the (B, D, h, w) map ``t``:
        norm, ``GELU(t + mean_k DWConv_k(t))`` (one depthwise convolution,
        :meth:`multi_scale_kernel`), channel and spatial attention. Both the layer by
        layer :meth:`forward` and :func:`~mmslora.models.fused_mslora.fused_mslora`
        run this."""
        t = self.norm(t)
        if records_autograd():
            # the depthwise weight gradient is about 2x faster in channels-last on CPU
            t = t.contiguous(memory_format=torch.channels_last)
        kernel, bias = self.multi_scale_kernel()
        padding = max(conv.padding[0] for conv in self.multi_scale)  # K // 2, an int
        t = self.act(F.conv2d(t, kernel, bias, padding=padding, groups=self.norm.num_channels))
        if self.channel_attn is not None:
            t = t * self.channel_attn(t)
        if self.spatial_attn is not None:
            t = _spatial_attention(self.spatial_attn, t)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        z = self.expand(self.chain(self.reduce(x)))
        return nearest_upsample(torch.sigmoid(z) if self.sigmoid else z, self.stride, size)


@MODELS.register_module()
class MSLoRAAdapter(BlockAdapter):
    """MSLoRA: ``F_hat = F + Proj(F) * Trans(F)`` on a (B, C, H, W) feature map.

    A :class:`~mmslora.models.base.BlockAdapter` (see the module docstring for the
    equations). ``combine``, ``channel_attention``, ``spatial_attention``, ``init``,
    ``trans_stride`` and ``max_hidden_ratio`` are ablation switches; their defaults
    build the module of the equations.

    Args:
        channels (int): C, channels of the block output it adapts.
        hidden_dim (int): D, the low-rank width of both branches. Default 64.
        groups (int): G, groups of the 1x1 projections. Default 8. Where G does not
            divide both C and D, the largest divisor of both below G is used (recorded in
            ``adjustment`` and in the parameter report), unless ``strict_groups``.
        kernel_sizes (Sequence[int]): odd depthwise kernel sizes of the multi-scale
            transform; ``(3,)`` for a single scale. Default (3, 5, 7).
        reduction (int): squeeze ratio of the channel attention. Default 4.
        spatial_kernel (int): odd kernel of the spatial attention. Default 7.
        dropout (float): dropout on ``H(F)`` during training. Default 0.
        strict_groups (bool): refuse a ``groups`` that does not divide C and D
            instead of reducing it. Default False.
        with_cp (bool): gradient checkpointing of the adapter: keep only its input
            from forward to backward and recompute the rest there (same values).
            Default False.
        combine (str): how the branches make ``H``, with ``z = Expand(t)`` the gate's
            logit: ``'product'`` ``Proj(F) * sigmoid(z)`` (the paper's); ``'sum'``
            ``Proj(F) + z``; ``'proj'`` ``Proj(F)`` alone (no ``trans`` module, the
            Trans arguments ignored); ``'trans'`` ``F * (2 sigmoid(z) - 1)``, a gate on
            ``F`` alone (no ``proj`` module). Default 'product'.
        channel_attention (bool): the squeeze-excite step of ``Trans``; False skips it
            (no parameters). Default True.
        spatial_attention (bool): the spatial attention step of ``Trans``; False skips
            it (no parameters). Default True.
        init (str): the start; each gives ``F_hat = F`` exactly at step 0.
            ``'zero_up'`` zeros ``Proj``'s up-projection; ``'zero_scale'`` starts both
            branches random and multiplies ``H`` by a learned per-channel ``scale``
            (C,) that starts at zero; ``'gate_bias'`` (``combine='product'`` only) is
            ``'zero_up'`` with ``Expand``'s bias at ``log 9``, the gate starting at 0.9.
            ``zero_init`` lists the instance's zero-start parameters. Default 'zero_up'.
        trans_stride (int): ``Trans`` on the map average-pooled by ``trans_stride``
            (ceil mode), its output upsampled by nearest and cropped to (H, W);
            ``Proj`` stays at full resolution. Default 1 (full resolution).
        max_hidden_ratio (float, optional): D at most ``max_hidden_ratio * C``, rounded
            down to a multiple of ``groups`` (at least ``groups``); the narrowing is
            recorded in ``adjustment`` and the parameter report. Default None: D is
            ``hidden_dim`` everywhere.
        init_cfg (dict, optional): MMEngine initialisation config. Default None.
            The zero start (and ``init='gate_bias'``'s bias) is restored after it.

    Raises:
        ValueError: a width, group count, stride or kernel size that is not a positive
            int (kernels: odd), an unknown ``combine`` or ``init``, ``init='gate_bias'``
            without ``combine='product'``, or, with ``strict_groups``, ``groups`` that
            does not divide C and D.

    ``forward`` uses :func:`~mmslora.models.fused_mslora.fused_mslora` for
    ``combine='product'`` and ``F + residual(F)`` layer by layer for the other combines
    and while dropout is active. ``residual_and_gate`` gives ``Trans(F)`` as the gate
    for 'product' and 'trans', None for 'sum' and 'proj'.
    """

    zero_init = ('proj.up.weight',)  # the defaults'; set per instance in __init__
    _zero_init = {
        'product': ('proj.up.weight',),
        'proj': ('proj.up.weight',),
        'sum': ('proj.up.weight', 'trans.expand.weight', 'trans.expand.bias'),
        'trans': ('trans.expand.weight', 'trans.expand.bias'),
    }

    def __init__(
        self,
        channels: int,
        hidden_dim: int = 64,
        groups: int = 8,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        reduction: int = 4,
        spatial_kernel: int = 7,
        dropout: float = 0.0,
        strict_groups: bool = False,
        with_cp: bool = False,
        combine: str = 'product',
        channel_attention: bool = True,
        spatial_attention: bool = True,
        init: str = 'zero_up',
        trans_stride: int = 1,
        max_hidden_ratio: Optional[float] = None,
        init_cfg=None,
    ) -> None:
        super().__init__(channels, dropout=dropout, with_cp=with_cp, init_cfg=init_cfg)
        _check_switches(
            dict(
                hidden_dim=hidden_dim, groups=groups, reduction=reduction, trans_stride=trans_stride
            ),
            dict(combine=combine, init=init),
            dict(channel_attention=channel_attention, spatial_attention=spatial_attention),
        )
        kernel_sizes = _check_kernel_sizes(kernel_sizes, spatial_kernel)
        hidden_dim, groups, self.adjustment = _fit_width(
            channels, hidden_dim, groups, strict_groups, max_hidden_ratio
        )
        self.groups, self.combine, self.init = groups, combine, init
        self.proj = LowRankProjection(channels, hidden_dim, groups) if combine != 'trans' else None
        self.trans = (
            MultiScaleTransform(
                channels,
                hidden_dim,
                groups,
                kernel_sizes,
                reduction,
                spatial_kernel,
                channel_attention,
                spatial_attention,
                sigmoid=combine != 'sum',
                stride=trans_stride,
            )
            if combine != 'proj'
            else None
        )
        self.scale = nn.Parameter(torch.zeros(channels)) if init == 'zero_scale' else None
        if init == 'zero_scale' and self.proj is not None:
            nn.init.kaiming_uniform_(self.proj.up.weight, a=5**0.5)  # as Proj.down
        self.zero_init = ('scale',) if init == 'zero_scale' else self._zero_init[combine]
        self.zero_start_()

    def zero_start_(self) -> None:
        """The start of ``init``: the ``zero_init`` parameters to zero and, for
        ``init='gate_bias'``, ``Expand``'s bias to ``log 9`` (in place, no autograd)."""
        super().zero_start_()
        if self.init == 'gate_bias':
            with torch.no_grad():
                self.trans.expand.bias.fill_(OPEN_GATE_BIAS)

    def residual_and_gate(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(H(F), gate)`` for a (B, C, H, W) input, layer by layer; the gate is
        ``Trans(F)`` for 'product' and 'trans', None for 'sum' and 'proj'."""
        trans = self.trans(x) if self.trans is not None else None
        gate = trans if self.combine in ('product', 'trans') else None
        if self.combine == 'product':
            h = self.proj(x) * trans
        elif self.combine == 'sum':
            h = self.proj(x) + trans
        elif self.combine == 'proj':
            h = self.proj(x)
        else:  # 'trans': F * 2 Trans(F) - F
            h = x * (2 * trans - 1)
        if self.scale is not None:
            h = h * self.scale.view(-1, 1, 1)
        return self.dropout(h), gate

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``H(F)`` (``Proj(F) * Trans(F)`` by default), (B, C, H, W), layer by layer."""
        return self.residual_and_gate(x)[0]

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """``F + H(F)``: :func:`~mmslora.models.fused_mslora.fused_mslora` (the same
        values in fewer operations) for ``combine='product'``, else layer by layer, and
        layer by layer while dropout is active."""
        if self.combine != 'product' or (
            self.training and not isinstance(self.dropout, nn.Identity)
        ):
            return x + self.residual(x)
        return fused_mslora(self, x)


def _check_switches(positive: dict, choices: dict, flags: dict) -> None:
    """``ValueError`` naming the fix for a non-positive int among ``positive``, a
    ``combine`` / ``init`` outside its choices, a non-bool among ``flags``, or
    ``init='gate_bias'`` without ``combine='product'``."""
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'MSLoRAAdapter: {name} must be a positive int, got {value!r}.')
    allowed = dict(combine=COMBINES, init=INITS)
    for name, value in choices.items():
        if not isinstance(value, str) or value not in allowed[name]:
            raise ValueError(
                f'MSLoRAAdapter: {name} must be one of '
                f"{', '.join(map(repr, allowed[name]))}, got {value!r}."
            )
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f'MSLoRAAdapter: {name} must be True or False, got {value!r}.')
    if choices['init'] == 'gate_bias' and choices['combine'] != 'product':
        raise ValueError(
            f"MSLoRAAdapter: init='gate_bias' opens the sigmoid gate on "
            f"Proj, which only combine='product' has, got combine={choices['combine']!r}; "
            f"use init='zero_up' or 'zero_scale'."
        )


def _check_kernel_sizes(kernel_sizes: Sequence[int], spatial_kernel: int) -> tuple:
    """``kernel_sizes`` as a tuple; ``ValueError`` for none, or an even or non-positive
    size among them and ``spatial_kernel``."""
    kernel_sizes = tuple(kernel_sizes)
    if not kernel_sizes:
        raise ValueError(
            'MSLoRAAdapter: kernel_sizes is empty; give at least one odd size, e.g. (3, 5, 7).'
        )
    for k in kernel_sizes + (spatial_kernel,):
        if k < 1 or k % 2 == 0:
            raise ValueError(
                f'MSLoRAAdapter: kernel size {k} must be odd and positive so the '
                f'feature map keeps its size (use e.g. 3, 5 or 7).'
            )
    return kernel_sizes


def _fit_width(
    channels: int,
    hidden_dim: int,
    groups: int,
    strict_groups: bool,
    max_hidden_ratio: Optional[float],
) -> Tuple[int, int, Optional[str]]:
    """``(hidden_dim, groups, adjustment)``: D capped by ``max_hidden_ratio``
    (:func:`narrowed_width`) and G fitted to C and D (:func:`fitting_groups`; with
    ``strict_groups`` a ``ValueError`` instead), and what was changed (None if nothing)."""
    adjustments = []
    if max_hidden_ratio is not None:
        capped = narrowed_width(channels, hidden_dim, groups, max_hidden_ratio)
        if capped != hidden_dim:
            adjustments.append(
                f'MSLoRAAdapter hidden_dim {hidden_dim} -> {capped} '
                f'(C={channels}, max_hidden_ratio={max_hidden_ratio})'
            )
            hidden_dim = capped
    if strict_groups:
        _check_divisible('channels', channels, groups)
        _check_divisible('hidden_dim', hidden_dim, groups)
    elif channels % groups or hidden_dim % groups:
        fitted = fitting_groups(channels, hidden_dim, groups)
        adjustments.append(
            f'MSLoRAAdapter groups {groups} -> {fitted} (C={channels}, D={hidden_dim})'
        )
        groups = fitted
    return hidden_dim, groups, '; '.join(adjustments) or None
