"""Feature layouts of backbone blocks, and the conversion to and from (B, C, H, W).

An adapter works on a (B, C, H, W) map. Blocks hand over their outputs in one of
three layouts:

* ``'nchw'``: a CNN block's (B, C, H, W) map (ResNet BasicBlock/Bottleneck).
* ``'nhwc'``: a channels-last (B, H, W, C) map (blocks that keep their maps that way).
* ``'nlc'``: tokens (B, H*W, C); the grid (H, W) is an argument of the block: its
  ``hw_shape`` (Swin blocks, ``forward(x, hw_shape)``), else the first argument after
  ``x`` that is a pair of ints whose product is the number of tokens (PVT, SegFormer),
  or two ints ``H, W`` after ``x`` (SegNeXt).
* ``'tokens'``: tokens (B, N + H*W, C) with N extra tokens (cls, distillation,
  registers) first; the grid (H, W) is the output size of the backbone's patch
  embedding (ViT encoder layers). Extra tokens pass through untouched.
* ``'tokens/<s>'``: the same, the grid being the backbone's input size divided by the
  stride ``s`` (rounded down), for backbones whose patch embedding does not state it
  (T2T-ViT, HiViT).
"""

from typing import Callable, Optional, Sequence, Tuple

import torch

LAYOUTS = ('nchw', 'nhwc', 'nlc', 'tokens')


def parse_layout(layout: str) -> Tuple[str, Optional[int]]:
    """``(layout, grid stride)``: ``'tokens/16'`` -> ``('tokens', 16)``; a layout of
    :data:`LAYOUTS` -> ``(layout, None)``."""
    base, _, stride = str(layout).partition('/')
    if base not in LAYOUTS or (
        stride and (base != 'tokens' or not stride.isdigit() or int(stride) < 1)
    ):
        raise ValueError(
            f"unknown layout {layout!r}; use one of {LAYOUTS} or "
            f"'tokens/<stride>' (e.g. 'tokens/16')."
        )
    return base, int(stride) if stride else None


def _is_int(value) -> bool:
    """An int, or while ``torch.jit.trace`` (the TorchScript ONNX exporter) records, a
    traced size (a 0-dim integer tensor: there ``x.shape[i]`` is one)."""
    return isinstance(value, int) or (
        isinstance(value, torch.Tensor)
        and torch.jit.is_tracing()
        and value.dim() == 0
        and not value.is_floating_point()
    )


def _is_hw(value, length: Optional[int]) -> bool:
    if isinstance(value, torch.Size) or (isinstance(value, (tuple, list)) and len(value) == 2):
        if len(value) == 2 and all(_is_int(v) for v in value):
            return length is None or bool(value[0] * value[1] == length)
    return False


def hw_from_args(
    args: tuple, kwargs: dict, length: Optional[int] = None, strict: bool = False
) -> Optional[Tuple[int, int]]:
    """The (H, W) grid among a block's call arguments: ``hw_shape`` (or the argument
    after ``x``), else the first other argument that is a pair of ints with
    ``H * W == length``, else two int arguments ``H, W`` after ``x``; None when there is
    none. ``strict``: only a grid with ``H * W == length``."""
    named = [kwargs['hw_shape']] if 'hw_shape' in kwargs else list(args[1:2])
    candidates = named + list(args[1:]) + [v for k, v in kwargs.items() if k != 'hw_shape']
    for value in candidates:
        if _is_hw(value, length):
            return int(value[0]), int(value[1])
    # block(x, H, W) with the two sizes as separate ints (SegNeXt's MSCAN)
    ints = [v for v in list(args[1:3]) if _is_int(v)] or [
        kwargs[k] for k in ('H', 'W') if _is_int(kwargs.get(k))
    ]
    if len(ints) == 2 and (length is None or ints[0] * ints[1] == length):
        return int(ints[0]), int(ints[1])
    if strict:
        return None
    # the block's own hw_shape even if it does not fit: the caller names the mismatch
    return next((tuple(map(int, v)) for v in named if _is_hw(v, None)), None)


def patch_grid(output) -> Optional[tuple]:
    """The (H, W) patch grid a patch embedding's output states: the pair after the
    tokens of mm*'s ``PatchEmbed`` (``(tokens, (H, W))``), or the last two dims of a
    (B, C, H, W) map; None for any other output."""
    if (
        isinstance(output, (tuple, list))
        and len(output) > 1
        and isinstance(output[1], (tuple, list, torch.Size))
        and len(output[1]) == 2
    ):
        return tuple(output[1])
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return tuple(output.shape[-2:])
    return None


def _like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in ``x``'s memory layout: a contiguous input gets a contiguous output, so
    the layers after the block compute exactly as without the adapter."""
    return out.contiguous() if x.is_contiguous() else out


def _nlc_grid(x: torch.Tensor, args: tuple, kwargs: dict, outputs: tuple) -> Tuple[int, int]:
    """(H, W) of an ``'nlc'`` block output: from the block's other outputs first, then
    from its call arguments; ``ValueError`` naming the fix when neither has it."""
    length = x.shape[1] if x.dim() == 3 else None
    hw = hw_from_args((None, *outputs), {}, length, strict=True) or hw_from_args(
        args, kwargs, length
    )
    if hw is None:
        raise ValueError(
            "layout 'nlc' needs the block to be called with its grid, as "
            "block(x, hw_shape); this block got no (H, W) pair whose product is its "
            f"number of tokens (output shape {tuple(x.shape)}). Use layout 'tokens' "
            "(grid from the patch embedding) or 'nchw'."
        )
    return hw


def _tokens_grid(
    grid: Optional[Sequence[int]], stride: Optional[int], input_hw: Optional[Sequence[int]]
) -> Tuple[int, int]:
    """(H, W) of a ``'tokens'`` block output: the patch grid, or the input size over
    ``stride`` for ``'tokens/<s>'``; ``RuntimeError`` naming the fix without either."""
    if stride is not None:
        grid = None if input_hw is None else (input_hw[0] // stride, input_hw[1] // stride)
    if grid is None:
        raise RuntimeError(
            "layout 'tokens' needs the patch grid, but the patch embedding did not run "
            'before this block; set `grid_from` to the name of the module that makes the '
            'patch tokens.'
        )
    return int(grid[0]), int(grid[1])


def apply_in_layout(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    layout: str,
    args: tuple,
    kwargs: dict,
    grid: Optional[Sequence[int]] = None,
    outputs: tuple = (),
    input_hw: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Apply ``fn`` (a (B, C, H, W) -> (B, C, H, W) map) to ``x`` given in ``layout``.

    Args:
        fn: the adapter.
        x: the block output in ``layout``.
        layout: one of ``LAYOUTS``.
        args, kwargs: the block's call arguments (for ``hw_shape``).
        grid: (H, W) of the patch grid, for ``'tokens'``.
        outputs: the block's other outputs, searched first for the (H, W) of ``'nlc'``
            (blocks that change the grid return it, e.g. ``(x, hw_shape)``).
        input_hw: (H, W) of the backbone's input, for ``'tokens/<s>'``.
    """
    layout, stride = parse_layout(layout)
    if layout == 'nchw':
        return fn(x)
    if layout == 'nhwc':
        return _like(fn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), x)
    if layout == 'nlc':
        h, w = _nlc_grid(x, args, kwargs, outputs)
        extra = 0
    elif layout == 'tokens':
        h, w = _tokens_grid(grid, stride, input_hw)
        extra = x.shape[1] - h * w
    if x.dim() != 3 or extra < 0 or (layout == 'nlc' and x.shape[1] != h * w):
        raise ValueError(
            f'a block output of shape {tuple(x.shape)} does not fit the patch grid {h}x{w} '
            f'(layout {layout!r}): the input size must match the patch grid of the backbone, '
            f'e.g. a multiple of the patch size, and the block must return (B, L, C) tokens.'
        )
    b, _, c = x.shape
    prefix, patches = x[:, :extra], x[:, extra:]
    fmap = patches.transpose(1, 2).reshape(b, c, h, w)
    patches = fn(fmap).flatten(2).transpose(1, 2)
    return torch.cat([prefix, patches], dim=1) if extra else _like(patches, x)
