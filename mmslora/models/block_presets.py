"""Which modules of a backbone are its blocks, and in which layout they answer.

The presets cover ResNet, Swin and ViT from mmdet, mmseg and mmpretrain, and
mmslora's EfficientNet-Lite (exact and instant). Any other backbone's blocks are found
by :mod:`.discovery` (the module tree plus one dry forward), or named by
``blocks=dict(pattern=..., layout=...)`` given to :class:`~mmslora.models.MSLoRABackbone`.
"""

import functools
import importlib
import re
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Type

import torch.nn as nn
from mmengine.logging import print_log

from .discovery import check_declared_blocks, discover_blocks, preset_channels
from .layouts import parse_layout

# (module path, block class names, layout). Subclasses (ResNeXt, ...) match too.
BLOCK_PRESETS: Tuple[Tuple[str, Tuple[str, ...], str], ...] = (
    ('mmdet.models.backbones.resnet', ('BasicBlock', 'Bottleneck'), 'nchw'),
    ('mmseg.models.backbones.resnet', ('BasicBlock', 'Bottleneck'), 'nchw'),
    ('mmpretrain.models.backbones.resnet', ('BasicBlock', 'Bottleneck'), 'nchw'),
    ('mmdet.models.backbones.swin', ('SwinBlock',), 'nlc'),
    ('mmseg.models.backbones.swin', ('SwinBlock',), 'nlc'),
    ('mmpretrain.models.backbones.swin_transformer', ('SwinBlock',), 'nlc'),
    ('mmseg.models.backbones.vit', ('TransformerEncoderLayer',), 'tokens'),
    ('mmpretrain.models.backbones.vision_transformer', ('TransformerEncoderLayer',), 'tokens'),
    ('mmslora.models.backbones.efficientnet_lite', ('MBConvBlock',), 'nchw'),
)

_preset_classes: Optional[List[Tuple[Type[nn.Module], str]]] = None


def preset_block_classes() -> List[Tuple[Type[nn.Module], str]]:
    """The preset block classes of the installed toolboxes, with their layouts."""
    global _preset_classes
    if _preset_classes is None:
        found = []
        for module_path, names, layout in BLOCK_PRESETS:
            try:
                module = importlib.import_module(module_path)
            except ImportError:
                continue
            found.extend((getattr(module, name), layout) for name in names)
        _preset_classes = found
    return _preset_classes


def _block_specs(blocks) -> List[dict]:
    if isinstance(blocks, str):
        raise TypeError(
            f"blocks must be None, 'auto' or a dict (or list of dicts) like "
            f"dict(pattern=r'layers\\.\\d+', layout='tokens'), got {blocks!r}."
        )
    specs = [blocks] if isinstance(blocks, dict) else list(blocks)
    for spec in specs:
        if not isinstance(spec, dict) or 'pattern' not in spec:
            raise TypeError(
                f'blocks must be a dict (or list of dicts) like '
                f"dict(pattern=r'layers\\.\\d+', layout='tokens'), got {spec!r}."
            )
        unknown = set(spec) - {'pattern', 'layout', 'channels'}
        if unknown:
            raise TypeError(
                f'blocks: unknown keys {sorted(unknown)}; allowed are pattern, layout and channels.'
            )
        parse_layout(spec.get('layout', 'nchw'))
    return specs


class FoundBlocks(dict):
    """Block name -> ``(layout, channels or None)``, as :func:`find_blocks` resolved it.

    Attributes:
        resolver (str): which resolver of the chain matched: ``'preset'``,
            ``'discovery'`` or ``'pattern'``.
    """

    def __init__(self, blocks: Dict[str, Tuple[str, Optional[int]]], resolver: str) -> None:
        super().__init__(blocks)
        self.resolver = resolver


#: a resolver: (backbone, grid_from) -> (the blocks it found, possibly none; what it tried)
Resolver = Callable[[nn.Module, str], Tuple[Dict[str, Tuple[str, Optional[int]]], str]]


def find_blocks(backbone: nn.Module, blocks=None, grid_from: str = 'patch_embed') -> FoundBlocks:
    """Map block names in ``backbone`` to ``(layout, channels or None)``.

    One chain of resolvers, the first that finds blocks wins: the presets, then
    discovery, then the user's patterns, as ``blocks`` selects them.

    Args:
        backbone: the wrapped backbone.
        blocks: None for the presets, and where none fits, the blocks found by
            :func:`~mmslora.models.discovery.discover_blocks` (module tree plus one dry
            forward); ``'auto'`` for discovery alone; or a dict / list of dicts with
            ``pattern`` (a regular expression matched in full against
            ``named_modules()`` names), ``layout`` (default ``'nchw'``) and optionally
            ``channels``, checked against one dry forward
            (:func:`~mmslora.models.discovery.check_declared_blocks`).
        grid_from: the patch embedding, for discovering ``'tokens'`` blocks.

    Returns:
        FoundBlocks: the blocks, with ``resolver`` naming the resolver that matched.

    Raises:
        TypeError: for ``blocks`` of another form (the message shows the right one).
        ValueError: when nothing matched (the message lists what was tried and a few
            candidate module names), or when a named block's output contradicts its
            declared layout or channels (the message names the layout found).
    """
    chain: List[Tuple[str, Resolver]]
    if blocks is None:
        chain = [('preset', _from_presets), ('discovery', _from_discovery)]
    elif isinstance(blocks, str) and blocks == 'auto':
        chain = [('discovery', _from_discovery)]
    else:
        chain = [('pattern', functools.partial(_from_patterns, specs=_block_specs(blocks)))]
    tried = ''
    for resolver_name, resolver in chain:
        found, tried = resolver(backbone, grid_from)
        if found:
            return FoundBlocks(found, resolver_name)
    raise ValueError(
        f'MSLoRABackbone: no block of {type(backbone).__name__} matched {tried}. '
        f'Pass blocks=dict(pattern=..., layout=...) naming the blocks to adapt; '
        f'candidate module names: {candidate_names(backbone)}.'
    )


def _from_presets(backbone: nn.Module, grid_from: str):
    """The blocks of the preset classes (outermost matches), with the channels of one
    dry forward; none where a block's output does not fit its preset layout."""
    classes = preset_block_classes()
    layouts: Dict[str, str] = {}
    for name, module in backbone.named_modules():
        if any(name.startswith(f'{done}.') for done in layouts):
            continue  # a block inside a matched block
        layout = next((lay for cls, lay in classes if isinstance(module, cls)), None)
        if layout is not None:
            layouts[name] = layout
    channels = preset_channels(backbone, layouts, grid_from) if layouts else None
    if channels is None:
        return {}, 'the presets'
    return {n: (layout, channels[n]) for n, layout in layouts.items()}, 'the presets'


def _from_discovery(backbone: nn.Module, grid_from: str):
    """The blocks :func:`~mmslora.models.discovery.discover_blocks` finds (logged)."""
    discovery = discover_blocks(backbone, grid_from)
    if discovery.blocks:
        print_log(
            f'MSLoRABackbone: {len(discovery.blocks)} blocks of '
            f'{type(backbone).__name__} found by a dry forward at '
            f'{discovery.input_size}: {_head(list(discovery.blocks))}',
            logger='current',
        )
    return dict(discovery.blocks), (
        'the block finder (no preset for this backbone; stages it declined: '
        f'{dict(list(discovery.skipped.items())[:3]) or "none"})'
    )


def _from_patterns(backbone: nn.Module, grid_from: str, specs: List[dict]):
    """The modules the specs' patterns match in full (the first matching spec gives
    layout and channels), checked against one dry forward."""
    found: Dict[str, Tuple[str, Optional[int]]] = {}
    for name, _ in backbone.named_modules():
        spec = next((s for s in specs if name and re.fullmatch(s['pattern'], name)), None)
        if spec is not None:
            found[name] = (spec.get('layout', 'nchw'), spec.get('channels'))
    if found:
        check_declared_blocks(backbone, found, grid_from)
    return found, 'the patterns ' + ', '.join(f"'{s['pattern']}'" for s in specs)


def _head(names: List[str]) -> str:
    return ', '.join(names[:4]) + (f', ... ({len(names)} in all)' if len(names) > 4 else '')


def candidate_names(backbone: nn.Module, limit: int = 8) -> List[str]:
    """A few module names that look like blocks (containers with parameters)."""
    names = [
        name
        for name, module in backbone.named_modules()
        if name and len(list(module.children())) > 1
    ]
    return names[:limit]


def iter_norms(module: nn.Module) -> Iterator[nn.Module]:
    """Normalisation layers in ``module`` (any layer that keeps running statistics, and
    LayerNorm/GroupNorm)."""
    for m in module.modules():
        if hasattr(m, 'running_mean') or isinstance(
            m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
        ):
            yield m
