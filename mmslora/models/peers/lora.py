"""LoRA on the backbone's own layers (Hu et al., *LoRA: Low-Rank Adaptation of Large
Language Models*, ICLR 2022).

A frozen layer ``y = W x + b`` becomes::

    y = W x + b + (alpha / r) * B A x          A: r x in,  B: out x r,  B = 0 at start

* ``nn.Linear`` (..., in) -> (..., out): ``A`` and ``B`` are bias-free linear layers.
* ``nn.Conv2d`` (B, in, H, W) -> (B, out, H', W'): ``A`` is a bias-free convolution
  in -> r with the layer's kernel size, stride, padding and dilation, ``B`` a 1x1
  convolution r -> out, so ``B A`` is the convolution with the rank-r kernel
  ``dW[o, i] = sum_j B[o, j] A[j, i]`` (shape out x in x kh x kw, as ``W``; see
  :meth:`LoRA.delta_weight`).

Which layers are declined (:meth:`LoRA.skip_reason`; the wrapper lists them in
``skipped_layers``):

* grouped and depthwise convolutions (``groups > 1``). Their weight is
  (out, in / groups, kh, kw) and mixes no channels across groups; a dense ``B A`` over
  all input channels would add exactly the cross-group mixing the layer does not have,
  and per group a depthwise kh x kw filter has no channel dimension to be low-rank in.
  peft's grouped-convolution LoRA had repeated shape/merge bugs for this reason, so
  mmslora leaves these layers frozen and untouched;
* convolutions with ``padding_mode`` other than ``'zeros'``, and subclasses that
  override ``forward`` (other than mmcv's empty-input ``Conv2d`` wrapper), e.g. with
  TensorFlow ``'SAME'`` padding computed in ``forward`` as EfficientNet-Lite's stem:
  ``A`` could not reproduce their geometry. Such subclasses are adapted only when
  they are 1x1, stride 1 and unpadded, where no padding can differ;
* nothing else: every ``nn.Linear`` (subclasses too, e.g. mmcv's ``Linear``) maps
  (..., in) to (..., out), so the update always fits its output.

``B`` starts at zero, so the adapted backbone computes the pretrained one at step 0.
The update is attached by a forward hook (``layer(x) + LoRA(x)``), so the backbone's
state-dict keys do not change; :meth:`LoRA.delta_weight` gives ``(alpha / r) B A`` in
the layer's weight shape to merge after training.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn

from mmslora.registry import MODELS
from ..base import LayerAdapter


def _standard_conv_forwards() -> tuple:
    """``forward`` functions that compute a plain zero-padded convolution: torch's, and
    mmcv's ``Conv2d`` wrapper (registered as ``'Conv'``; it only handles empty inputs)."""
    forwards = [nn.Conv2d.forward]
    try:
        from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d

        forwards.append(MMCVConv2d.forward)
    except ImportError:
        pass
    return tuple(forwards)


def _pair(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@MODELS.register_module()
class LoRA(LayerAdapter):
    """LoRA update ``(alpha / r) B A x`` of one ``nn.Linear`` or ``nn.Conv2d``.

    A :class:`~mmslora.models.base.LayerAdapter`: placed by
    :class:`~mmslora.models.MSLoRABackbone` beside the backbone's layers, e.g. ``adapter=dict(type='mmslora.LoRA', rank=8, alpha=8,
    targets=r'.*\\.(qkv|proj)')``; built per layer by :meth:`from_layer`. The forward
    returns the update only; the wrapper adds it to the layer's output.

    Args:
        in_channels (int): input features / channels of the layer.
        out_channels (int): output features / channels of the layer.
        rank (int): r. Default 8.
        alpha (float): scale numerator; the update is scaled by ``alpha / rank``.
            Default 8 (scale 1 at rank 8).
        dropout (float): dropout on the input of ``A``. Default 0.
        kernel_size, stride, padding, dilation: the convolution's geometry; a linear
            layer when ``kernel_size`` is None (default).
        init_cfg (dict, optional): MMEngine init config (default: ``A`` Kaiming-uniform
            as ``nn.Linear``; ``B`` is zero after any init_cfg, the zero start).
    """

    layer_types = (nn.Linear, nn.Conv2d)
    zero_init = ('lora_B.weight',)
    width_arg = 'rank'

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        kernel_size: Union[int, Tuple[int, int], None] = None,
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Union[int, Tuple[int, int], str] = 0,
        dilation: Union[int, Tuple[int, int]] = 1,
        init_cfg=None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f'LoRA: rank must be a positive int, got {rank!r}.')
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.alpha = alpha
        self.scaling = alpha / rank
        if kernel_size is None:
            self.lora_A = nn.Linear(in_channels, rank, bias=False)
            self.lora_B = nn.Linear(rank, out_channels, bias=False)
        else:
            self.lora_A = nn.Conv2d(
                in_channels,
                rank,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=False,
            )
            self.lora_B = nn.Conv2d(rank, out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
        self.zero_start_()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # ------------------------------------------------------------ placement
    @classmethod
    def skip_reason(cls, layer: nn.Module) -> Optional[str]:
        """Why ``layer`` gets no LoRA, or None when it is supported."""
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                kind = 'depthwise' if layer.groups == layer.in_channels else 'grouped'
                return (
                    f'{kind} convolution (groups={layer.groups}): a dense low-rank '
                    f'update would mix channels the layer keeps apart; left frozen'
                )
            if layer.padding_mode != 'zeros':
                return f"padding_mode={layer.padding_mode!r} (only 'zeros' is reproduced)"
            custom = type(layer).forward not in _standard_conv_forwards()
            pointwise = (
                _pair(layer.kernel_size) == (1, 1)
                and _pair(layer.stride) == (1, 1)
                and layer.padding in ((0, 0), 0, 'valid')
            )
            if custom and not pointwise:
                return (
                    f'{type(layer).__name__} overrides forward (its own padding) with '
                    f'kernel {tuple(_pair(layer.kernel_size))}, stride '
                    f'{tuple(_pair(layer.stride))}: the LoRA branch could not reproduce '
                    f'its output geometry'
                )
            return None
        if isinstance(layer, nn.Linear):
            return None  # any (..., in) -> (..., out) layer takes an additive update
        return f'{type(layer).__name__} is neither nn.Linear nor nn.Conv2d'

    @classmethod
    def from_layer(cls, layer: nn.Module, **kwargs) -> 'LoRA':
        """The LoRA of ``layer`` (an ``nn.Linear`` or a non-grouped ``nn.Conv2d``)."""
        reason = cls.skip_reason(layer)
        if reason:
            raise ValueError(f'LoRA: cannot adapt this layer: {reason}.')
        if isinstance(layer, nn.Conv2d):
            return cls(
                layer.in_channels,
                layer.out_channels,
                kernel_size=layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                **kwargs,
            )
        return cls(layer.in_features, layer.out_features, **kwargs)

    # -------------------------------------------------------------- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) B A x``, shaped like the layer's output."""
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in the layer's weight shape (out, in[, kh, kw]), to merge
        into ``W`` after training (``W + delta_weight()`` computes layer + LoRA)."""
        b = self.lora_B.weight.flatten(1)  # (out, r)
        a = self.lora_A.weight  # (r, in) or (r, in, kh, kw)
        return (b @ a.flatten(1)).view(b.shape[0], *a.shape[1:]) * self.scaling

    def extra_repr(self) -> str:
        return f'rank={self.rank}, alpha={self.alpha}'
