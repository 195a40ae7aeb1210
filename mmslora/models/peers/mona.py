"""Mona, the multi-cognitive visual adapter (Yin et al., *5%>100%: Breaking Performance
Shackles of Full Fine-Tuning on Visual Recognition Tasks*, CVPR 2025).

On a block output ``F`` of shape (B, C, H, W), with ``D = 64`` (the paper's width)::

    x  = gamma * LN(F) + gamma_x * F          scaled LayerNorm over C; gamma = 1e-6,
                                              gamma_x = 1 at start (per channel)
    t  = Down(x)                              linear C -> D
    t  = t + mean(DW3(t), DW5(t), DW7(t))     depthwise 3x3, 5x5, 7x7 (filters)
    t  = t + PW(t)                            1x1 convolution D -> D
    t  = Dropout(GELU(t))                     p = 0.1
    F_hat = F + Up(t)                         linear D -> C

``Up`` (and its bias) start at zero here, so the adapted network is the pretrained one
at step 0 (the paper initialises it like any linear layer). Mona puts two adapters
in each block (after attention and after the MLP of a Swin block); the block
wrapper puts one after each block, the same placement MSLoRA gets.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmslora.registry import MODELS
from ..base import BlockAdapter


class MonaFilter(nn.Module):
    """Mona's multi-scale filter on (B, D, H, W): averaged depthwise 3/5/7 plus the
    input, then a 1x1 convolution plus its input."""

    def __init__(self, dim: int, kernel_sizes=(3, 5, 7)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in kernel_sizes
        )
        self.projector = nn.Conv2d(dim, dim, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + sum(conv(t) for conv in self.convs) / len(self.convs)
        return t + self.projector(t)


@MODELS.register_module()
class MonaAdapter(BlockAdapter):
    """Mona after a block: ``F + Up(Dropout(GELU(Filter(Down(ScaledLN(F))))))``.

    Args:
        channels (int): C, channels of the block output (inferred by the wrapper).
        hidden_dim (int): D. Default 64 (the paper's).
        dropout (float): dropout before ``Up``. Default 0.1 (the paper's).
        kernel_sizes (tuple[int]): depthwise kernels. Default (3, 5, 7).
        gamma_init (float): start value of the LayerNorm branch's scale. Default 1e-6.
        with_cp (bool): gradient checkpointing of the adapter. Default False.
        init_cfg (dict, optional): MMEngine init config (``Up`` and its bias are zero
            after it, the zero start).
    """

    zero_init = ('up.weight', 'up.bias')

    def __init__(
        self,
        channels: int,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        kernel_sizes=(3, 5, 7),
        gamma_init: float = 1e-6,
        with_cp: bool = False,
        init_cfg=None,
    ) -> None:
        super().__init__(channels, dropout=dropout, with_cp=with_cp, init_cfg=init_cfg)
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(torch.full((channels,), gamma_init))
        self.gamma_x = nn.Parameter(torch.ones(channels))
        self.down = nn.Linear(channels, hidden_dim)
        self.filter = MonaFilter(hidden_dim, kernel_sizes)
        self.up = nn.Linear(hidden_dim, channels)
        self.zero_start_()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``Up(...)`` of a (B, C, H, W) map, (B, C, H, W)."""
        f = x.permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm and the linears act on C
        t = self.down(self.norm(f) * self.gamma + f * self.gamma_x)
        t = self.filter(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.up(self.dropout(F.gelu(t))).permute(0, 3, 1, 2)
