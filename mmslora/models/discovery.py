"""Find the blocks of any backbone: the module tree plus one dry forward.

A *stage* is a ``ModuleList`` / ``Sequential`` (or the backbone itself) whose children
run one after the other on a feature map: each child's output has the shape of the
next child's input, and at least one child keeps its input's shape (a residual block).
Its blocks are children of two or more layers (modules owning a weight of two or more
dimensions). The blocks are the children of the innermost stages (a stage inside a
block wins over the stage that holds the block; ResNet's ``layer1`` is a stage of
Bottlenecks, a Bottleneck's ``downsample`` is not, since its children are single
layers). A backbone without such blocks, a plain stack of layers (VGG, AlexNet), gets
its single layers as units instead. Each block's layout is read off the dry forward:

* a (B, C, H, W) output: ``'nchw'``, or ``'nhwc'`` when the map is (B, H, W, C) (told
  apart on a non-square input);
* a (B, L, C) output: ``'nlc'`` when the block is called with a pair (H, W), H * W = L
  (Swin, PVT, SegFormer); ``'tokens'`` when the patch embedding's grid leaves a few
  extra tokens (cls, registers) in front (ViTs), ``'tokens/<s>'`` when the input size
  at a patch stride ``s`` does (T2T-ViT); otherwise the stage is skipped.

The dry forward (:func:`~mmslora.models.dry_run.dry_run`: eval mode, no autograd,
modes restored) runs on a random input drawn from a private generator, so neither
running statistics nor the global random state change.
"""

import functools
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .dry_run import dry_run
from .layouts import hw_from_args, parse_layout, patch_grid

__all__ = [
    'discover_blocks',
    'Discovery',
    'infer_channels',
    'preset_channels',
    'check_declared_blocks',
    'sample_inputs',
    'working_input',
    'fits_grid',
]

#: input sizes tried in order (after a size the backbone declares): non-square first
#: (it tells NCHW from NHWC), small first (it is fast)
INPUT_SIZES: Tuple[Tuple[int, int], ...] = ((128, 96), (224, 160), (224, 224), (256, 256), (64, 64))
MAX_EXTRA_TOKENS = 16
#: patch strides tried for token blocks whose grid no argument or patch embedding gives
GRID_STRIDES = (16, 32, 14, 8, 4)
ASPECT_TOLERANCE = 0.2


@dataclass
class _Call:
    order: int
    inp: Optional[torch.Size]
    out: Optional[torch.Size]
    hw: Optional[Tuple[int, int]]


@dataclass
class Discovery:
    """What :func:`discover_blocks` found.

    Attributes:
        blocks (dict): block name -> ``(layout, channels)``.
        skipped (dict): stage name -> why its children were not adapted.
        input_size (tuple): the (H, W) of the dry forward.
    """

    blocks: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    input_size: Optional[Tuple[int, int]] = None


def _first_tensor(value) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _layers(module: nn.Module) -> int:
    """How many modules in ``module`` own a weight of two or more dimensions
    (convolutions, linear maps; a conv + norm + activation unit has one)."""
    return sum(
        1 for m in module.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))
    )


def _candidate_sizes(backbone: nn.Module) -> List[Tuple[int, int]]:
    sizes = []
    declared = getattr(backbone, 'img_size', None)
    if isinstance(declared, int):
        sizes.append((declared, declared))
    elif isinstance(declared, (tuple, list)) and len(declared) == 2:
        sizes.append((int(declared[0]), int(declared[1])))
    return sizes + [s for s in INPUT_SIZES if s not in sizes]


def _input_channels(backbone: nn.Module) -> List[int]:
    """Input channel counts to try: 3 (images), then the first convolution's."""
    first = next((m.in_channels for m in backbone.modules() if isinstance(m, nn.Conv2d)), 3)
    return [3] if first == 3 else [3, first]


def sample_inputs(backbone: nn.Module) -> Iterator[torch.Tensor]:
    """Random (2, C, H, W) inputs a backbone may take, in the order they are tried:
    image channels first, sizes as :data:`INPUT_SIZES` after a declared ``img_size``;
    on the device and in the float type of its parameters; drawn from a private
    generator (the global random state is left alone)."""
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else 'cpu'
    dtype = param.dtype if param is not None and param.is_floating_point() else None
    for channels in _input_channels(backbone):
        for size in _candidate_sizes(backbone):
            generator = torch.Generator().manual_seed(0)
            yield torch.randn(2, channels, *size, generator=generator).to(device, dtype)


def working_input(backbone: nn.Module) -> Optional[torch.Tensor]:
    """The first of :func:`sample_inputs` that ``backbone`` takes (one dry run each:
    eval mode, no autograd, modes restored), or None."""
    with dry_run(backbone):
        for x in sample_inputs(backbone):
            try:
                backbone(x)
                return x
            except Exception:  # noqa: BLE001  (the next size may fit)
                continue
    return None


def fits_grid(length: int, grid: Optional[Sequence[int]]) -> bool:
    """Whether ``length`` tokens are the (H, W) ``grid``'s patches with up to
    :data:`MAX_EXTRA_TOKENS` extra tokens (cls, registers) in front."""
    return grid is not None and 0 <= length - grid[0] * grid[1] <= MAX_EXTRA_TOKENS


class _Recorder:
    """What one dry forward shows: each named module's first call (:class:`_Call`, in
    call order) and the patch grid of the ``grid_from`` module's output."""

    def __init__(self) -> None:
        self.calls: Dict[str, _Call] = {}
        self.grid: Optional[Tuple[int, int]] = None

    def record(self, name: str, module, args, kwargs, output) -> None:
        if name in self.calls:
            return
        inp = _first_tensor(args[:1]) if args else _first_tensor(list(kwargs.values()))
        out = _first_tensor(output)
        length = out.shape[1] if out is not None and out.dim() == 3 else None
        rest = tuple(output[1:]) if isinstance(output, (tuple, list)) else ()
        hw = hw_from_args((None, *rest), {}, length, strict=True) or hw_from_args(
            args, kwargs, length, strict=True
        )
        self.calls[name] = _Call(
            len(self.calls),
            None if inp is None else inp.shape,
            None if out is None else out.shape,
            hw,
        )

    def record_grid(self, module, args, output) -> None:
        self.grid = patch_grid(output)

    def attach(self, modules: Dict[str, nn.Module], names: Sequence[str], grid_from: str):
        """Forward hooks on ``names`` and ``grid_from``; their handles."""
        handles = [
            modules[n].register_forward_hook(functools.partial(self.record, n), with_kwargs=True)
            for n in names
        ]
        if grid_from in modules:
            handles.append(modules[grid_from].register_forward_hook(self.record_grid))
        return handles


def _dry_forward(backbone: nn.Module, names: Sequence[str], grid_from: str):
    """Run the backbone once; return ``(calls by module name, grid, (H, W))``."""
    modules = dict(backbone.named_modules())
    errors = []
    for x in sample_inputs(backbone):
        recorder = _Recorder()
        handles = recorder.attach(modules, names, grid_from)
        try:
            with dry_run(backbone):
                backbone(x)
            return recorder.calls, recorder.grid, tuple(x.shape[-2:])
        except Exception as err:  # an input the backbone does not take: try the next
            errors.append(f'{tuple(x.shape[1:])}: {type(err).__name__}: {err}')
        finally:
            for handle in handles:
                handle.remove()
    raise ValueError(
        f'MSLoRABackbone: a dry forward of {type(backbone).__name__} failed at '
        f'every input size tried ({"; ".join(errors)[:600]}); name its blocks '
        f'with blocks=dict(pattern=..., layout=...).'
    )


def infer_channels(block: nn.Module) -> int:
    """The output channels of ``block``: those of its last layer that states them."""
    channels = None
    for module in block.modules():
        for attr in ('out_channels', 'out_features', 'num_features'):
            if isinstance(getattr(module, attr, None), int):
                channels = getattr(module, attr)
                break
        else:
            shape = getattr(module, 'normalized_shape', None)
            if isinstance(shape, tuple) and len(shape) == 1:
                channels = shape[0]
    if channels is None:
        raise ValueError(
            f'MSLoRABackbone: cannot infer the output channels of a {type(block).__name__} '
            f'block; give them as blocks=dict(pattern=..., layout=..., channels=C).'
        )
    return channels


def _layer_channels(block: nn.Module) -> Optional[int]:
    try:
        return infer_channels(block)
    except ValueError:
        return None


def _aspect_layout(out: Sequence[int], size: Tuple[int, int]) -> Optional[str]:
    """``'nchw'`` or ``'nhwc'`` for a 4-d map whose spatial dims alone keep the
    non-square input's aspect (up to odd-size rounding); None when it does not tell."""
    aspect = size[0] / size[1]
    fits_nchw = abs(out[2] / out[3] / aspect - 1) < ASPECT_TOLERANCE
    fits_nhwc = abs(out[1] / out[2] / aspect - 1) < ASPECT_TOLERANCE
    if size[0] != size[1] and fits_nchw != fits_nhwc:
        return 'nchw' if fits_nchw else 'nhwc'
    return None


def _layout(
    call: _Call, block: nn.Module, size: Tuple[int, int], grid
) -> Tuple[Optional[str], str]:
    """``(layout, why not)`` of a block from its dry-forward call."""
    out = call.out
    if len(out) == 4:
        # the channels the block's last layer states decide; else the map's aspect
        # against the non-square input's
        stated = _layer_channels(block)
        if stated is not None and (out[1] == stated) != (out[3] == stated):
            return ('nchw' if out[1] == stated else 'nhwc'), ''
        by_aspect = _aspect_layout(out, size)
        if by_aspect:
            return by_aspect, ''
        # maps too small for their aspect: the channels are the one dim much larger
        if out[1] >= 4 * max(out[2], out[3]):
            return 'nchw', ''
        if out[3] >= 4 * max(out[1], out[2]):
            return 'nhwc', ''
        return None, (
            f'cannot tell channels from rows in the map {tuple(out)}: give '
            f'blocks=dict(pattern=..., layout=..., channels=...)'
        )
    if len(out) == 3:
        if call.hw is not None:
            return 'nlc', ''
        if fits_grid(out[1], grid):
            return 'tokens', ''
        for stride in GRID_STRIDES:  # a grid the input size gives at a patch stride
            if fits_grid(out[1], (size[0] // stride, size[1] // stride)):
                return f'tokens/{stride}', ''
        return None, (
            f'(B, L, C) tokens {tuple(out)} without a grid: no (H, W) argument '
            f'and no patch-embedding grid that fits'
        )
    return None, f'outputs of rank {len(out)} ({tuple(out)}) are no feature maps'


def discover_blocks(backbone: nn.Module, grid_from: str = 'patch_embed') -> Discovery:
    """Find the blocks of ``backbone`` and their layouts (see the module docstring)."""
    named = dict(backbone.named_modules())
    # a child shared under two names is known by its first (named_modules' choice)
    first_name = {id(m): name for name, m in named.items()}
    stages = {
        name: [first_name[id(c)] for c in m.children()]
        for name, m in named.items()
        if name == '' or isinstance(m, (nn.ModuleList, nn.Sequential))
    }
    watched = sorted({c for kids in stages.values() for c in kids})
    calls, grid, size = _dry_forward(backbone, watched, grid_from)
    result = Discovery(input_size=size)
    # blocks of two or more layers; a plain stack of layers (VGG) has none, and then
    # its single layers are the units
    for min_layers in (2, 1):
        _collect(result, stages, calls, named, size, grid, min_layers)
        if result.blocks:
            break
    return result


def _collect(
    result: Discovery,
    stages: Dict[str, List[str]],
    calls: Dict[str, _Call],
    named: Dict[str, nn.Module],
    size,
    grid,
    min_layers: int,
) -> None:
    """Fill ``result.blocks`` with the innermost runs of blocks of ``min_layers``."""
    runs: List[Tuple[str, List[Tuple[str, str, int]]]] = []
    for name, kids in stages.items():
        for run in _runs(kids, calls, named, min_layers):
            found, why = [], ''
            for k in run:
                layout, why = _layout(calls[k], named[k], size, grid)
                if layout is None:
                    break
                out = calls[k].out
                found.append((k, layout, int(out[1] if layout == 'nchw' else out[-1])))
            if why:
                result.skipped[name or '<backbone>'] = why
            else:
                runs.append((name, found))
    eligible = {k for _, found in runs for k, _, _ in found}
    containers = {name for name, _ in runs}
    for _, found in runs:
        for k, layout, channels in found:
            # the innermost blocks win: skip a block that holds a stage of blocks
            if not any(c == k or c.startswith(f'{k}.') for c in containers) and not any(
                e.startswith(f'{k}.') for e in eligible
            ):
                result.blocks[k] = (layout, channels)


def _runs(
    kids: List[str], calls: Dict[str, _Call], named: Dict[str, nn.Module], min_layers: int
) -> List[List[str]]:
    """Maximal runs of a container's children that are blocks of one stage: children of
    ``min_layers`` layers or more called one after the other, each output the next one's
    input shape, at least one keeping its input's shape. Runs of single layers
    (``min_layers`` 1, a plain stack) need not keep a shape, and parameter-free
    children (activations) do not break them."""
    ran = sorted(
        (k for k in kids if k in calls and calls[k].inp is not None and calls[k].out is not None),
        key=lambda k: calls[k].order,
    )
    runs, current = [], []
    for k in ran:
        layers = _layers(named[k])
        if layers < min_layers:
            if layers or min_layers > 1:
                runs.append(current)
                current = []
            continue
        if current and calls[current[-1]].out != calls[k].inp:
            runs.append(current)
            current = []
        current.append(k)
    runs.append(current)
    # blocks keep their input's shape somewhere in a stage; single layers need not
    return [
        run
        for run in runs
        if run and (min_layers == 1 or any(calls[k].inp == calls[k].out for k in run))
    ]


def preset_channels(
    backbone: nn.Module, layouts: Dict[str, str], grid_from: str = 'patch_embed'
) -> Optional[Dict[str, int]]:
    """The output channels of blocks a preset named (name -> layout), read off one dry
    forward (a block's last registered layer need not be its output layer: Res2Net's
    are its per-scale norms); None when a block's output does not fit its preset layout
    (a ViT block class reused in another design, e.g. MixMIM's stages, Conformer), so
    the block finder decides instead. Falls back to :func:`infer_channels` if the dry
    forward fails at every input size."""
    named = dict(backbone.named_modules())
    try:
        calls, grid, _ = _dry_forward(backbone, list(layouts), grid_from)
    except ValueError:
        return {name: infer_channels(named[name]) for name in layouts}
    channels = {}
    for name, layout in layouts.items():
        out = calls[name].out if name in calls else None
        if out is None:
            channels[name] = infer_channels(named[name])
            continue
        tokens = len(out) == 3 and (layout == 'nlc' or fits_grid(out[1], grid))
        if not (tokens or (layout == 'nchw' and len(out) == 4)):
            return None
        channels[name] = int(out[1] if layout == 'nchw' else out[-1])
    return channels


def _layout_problem(
    call: '_Call', layout: str, stride, found: Optional[str], size, grid, grid_from: str
) -> Optional[str]:
    """What in a dry forward contradicts a block declared with ``layout`` (None if
    nothing): another rank, the other channel order (unless the map's aspect backs the
    declaration), no (H, W) argument for ``'nlc'``, no patch grid for ``'tokens'``."""
    out = tuple(call.out)
    if len(out) != (4 if layout in ('nchw', 'nhwc') else 3):
        return f'its output in a dry forward at {size} has shape {out}'
    if (
        layout in ('nchw', 'nhwc')
        and found in ('nchw', 'nhwc')
        and found != layout
        and _aspect_layout(out, size) != layout
    ):
        return (
            f'its output in a dry forward at {size} has shape {out}, which is '
            f'{found!r} (the channels are dim {1 if found == "nchw" else 3})'
        )
    if layout == 'nlc' and call.hw is None:
        return f'it is not called with an (H, W) pair whose product is its {out[1]} tokens'
    if layout == 'tokens' and stride is None and grid is None:
        return f'grid_from={grid_from!r} gave no patch grid in a dry forward'
    return None


def check_declared_blocks(
    backbone: nn.Module,
    declared: Dict[str, Tuple[str, Optional[int]]],
    grid_from: str = 'patch_embed',
) -> None:
    """Check blocks a user named (name -> ``(layout, channels or None)``) against one dry
    forward: ``ValueError`` naming the block, what its output is and the fix when the
    output has another rank than the layout, is (B, C, H, W) where ``'nhwc'`` was
    declared or (B, H, W, C) where ``'nchw'`` was (read as by the block finder, unless
    the map's aspect backs the declared layout), has
    other channels than ``channels``, or, for ``'nlc'`` and ``'tokens'``, has no grid
    to reshape with. A backbone that no sample input runs is not checked."""
    named = dict(backbone.named_modules())
    try:
        calls, grid, size = _dry_forward(backbone, list(declared), grid_from)
    except ValueError:
        return
    for name, (declared_layout, channels) in declared.items():
        call = calls.get(name)
        if call is None or call.out is None:
            continue  # not run by the dry forward: nothing to check against
        layout, stride = parse_layout(declared_layout)
        out = tuple(call.out)
        found, _ = _layout(call, named[name], size, grid)
        problem = _layout_problem(call, layout, stride, found, size, grid, grid_from)
        if problem:
            fix = (
                f'use layout={found!r}'
                if found and found != declared_layout
                else "give the layout its output has: 'nchw', 'nhwc', 'nlc' with an (H, W) "
                "argument, 'tokens' with grid_from naming the patch embedding, or "
                "'tokens/<stride>'"
            )
            raise ValueError(
                f'MSLoRABackbone: blocks declares {name!r} as '
                f'{declared_layout!r}, but {problem}; {fix}.'
            )
        actual = out[1] if layout == 'nchw' else out[-1]
        if channels is not None and channels != actual:
            raise ValueError(
                f'MSLoRABackbone: blocks declares {name!r} with channels={channels}, but its '
                f'output in a dry forward at {size} has shape {out}: {actual} channels in '
                f'layout {declared_layout!r}; give channels={actual} or leave channels out '
                f'(they are read off the block).'
            )
