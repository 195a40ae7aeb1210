"""Feature layouts of backbone blocks, and the conversion to and from (B, C, H, W).

An adapter works on a (B, C, H, W) map. Blocks hand over their outputs in one of
three layouts:

* ``'nchw'``: a CNN block's (B, C, H, W) map (ResNet BasicBlock/Bottleneck).
* ``'nlc'``: tokens (B, H*W, C); the grid (H, W) is the block's ``hw_shape``
  argument (Swin blocks, ``forward(x, hw_shape)``).
* ``'tokens'``: tokens (B, N + H*W, C) with N extra tokens (cls, distillation,
  registers) first; the grid (H, W) is the output size of the backbone's patch
  embedding (ViT encoder layers). Extra tokens pass through untouched.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch

LAYOUTS = ('nchw', 'nlc', 'tokens')


def _hw_from_args(args: tuple, kwargs: dict) -> Tuple[int, int]:
    hw = kwargs.get('hw_shape', args[1] if len(args) > 1 else None)
    if hw is None:
        raise ValueError(
            "layout 'nlc' needs the block to be called as block(x, hw_shape); this block got "
            "no hw_shape. Use layout 'tokens' (grid from the patch embedding) or 'nchw'.")
    return int(hw[0]), int(hw[1])


def apply_in_layout(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, layout: str,
                    args: tuple, kwargs: dict,
                    grid: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Apply ``fn`` (a (B, C, H, W) -> (B, C, H, W) map) to ``x`` given in ``layout``.

    Args:
        fn: the adapter.
        x: the block output in ``layout``.
        layout: one of ``LAYOUTS``.
        args, kwargs: the block's call arguments (for ``hw_shape``).
        grid: (H, W) of the patch grid, for ``'tokens'``.
    """
    if layout == 'nchw':
        return fn(x)
    if layout == 'nlc':
        h, w = _hw_from_args(args, kwargs)
        extra = 0
    elif layout == 'tokens':
        if grid is None:
            raise RuntimeError(
                "layout 'tokens' needs the patch grid, but the patch embedding did not run "
                'before this block; set `grid_from` to the name of the module that makes the '
                'patch tokens.')
        h, w = int(grid[0]), int(grid[1])
        extra = x.shape[1] - h * w
    else:
        raise ValueError(f'unknown layout {layout!r}; use one of {LAYOUTS}.')
    if x.dim() != 3 or extra < 0 or (layout == 'nlc' and x.shape[1] != h * w):
        raise ValueError(
            f'a block output of shape {tuple(x.shape)} does not fit the patch grid {h}x{w} '
            f'(layout {layout!r}): the input size must match the patch grid of the backbone, '
            f'e.g. a multiple of the patch size, and the block must return (B, L, C) tokens.')
    b, _, c = x.shape
    prefix, patches = x[:, :extra], x[:, extra:]
    fmap = patches.transpose(1, 2).reshape(b, c, h, w)
    patches = fn(fmap).flatten(2).transpose(1, 2)
    return torch.cat([prefix, patches], dim=1) if extra else patches
