"""Bottleneck adapter after each block (Houlsby et al., *Parameter-Efficient Transfer
Learning for NLP*, ICML 2019; Chen et al., *AdaptFormer: Adapting Vision Transformers
for Scalable Visual Recognition*, NeurIPS 2022).

On a block output ``F`` of shape (B, C, H, W)::

    F_hat = F + s * Up(Dropout(act(Down(F))))      Down: C -> D,  Up: D -> C

``Down`` and ``Up`` are per-position linear maps over channels (1x1 convolutions on
the map, the same as linear layers on channel-last tokens), with biases. ``Up`` (and
its bias) start at zero, so the adapted network is the pretrained one at step 0.
``s`` is AdaptFormer's fixed scale (0.1 there); Houlsby's adapter is ``s = 1``.

Placement: mmslora puts it after every block, sequentially (Houlsby's position after a
sub-layer, once per block); AdaptFormer adds it in parallel to the MLP. With the block
wrapper both are "a residual bottleneck on the block's features", which is what the
comparison with MSLoRA (also after each block) needs.
"""

import torch
import torch.nn as nn

from mmslora.registry import MODELS
from ..base import BlockAdapter

_ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU}


@MODELS.register_module()
class BottleneckAdapter(BlockAdapter):
    """``F_hat = F + s * Up(act(Down(F)))`` on a (B, C, H, W) map.

    Args:
        channels (int): C, channels of the block output (inferred by the wrapper).
        hidden_dim (int): D, bottleneck width. Default 64 (AdaptFormer's choice for ViT-B).
        scale (float): s. Default 0.1 (AdaptFormer).
        dropout (float): dropout after the activation during training. Default 0.
        act (str): ``'relu'`` (AdaptFormer, Houlsby) or ``'gelu'``. Default ``'relu'``.
        with_cp (bool): gradient checkpointing of the adapter. Default False.
        init_cfg (dict, optional): MMEngine init config (default: ``Down``
            Kaiming-uniform, ``Down``'s bias zero; ``Up`` and its bias are zero
            after any init_cfg, the zero start).
    """

    zero_init = ('up.weight', 'up.bias')

    def __init__(
        self,
        channels: int,
        hidden_dim: int = 64,
        scale: float = 0.1,
        dropout: float = 0.0,
        act: str = 'relu',
        with_cp: bool = False,
        init_cfg=None,
    ) -> None:
        super().__init__(channels, dropout=dropout, with_cp=with_cp, init_cfg=init_cfg)
        if act not in _ACTIVATIONS:
            raise ValueError(
                f'BottleneckAdapter: act must be one of {sorted(_ACTIVATIONS)}, got {act!r}.'
            )
        self.hidden_dim, self.scale = hidden_dim, scale
        self.down = nn.Conv2d(channels, hidden_dim, 1)
        self.act = _ACTIVATIONS[act]()
        self.up = nn.Conv2d(hidden_dim, channels, 1)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        self.zero_start_()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``s * Up(act(Down(F)))``, (B, C, H, W)."""
        return self.up(self.dropout(self.act(self.down(x)))) * self.scale
