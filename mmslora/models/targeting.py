"""Where a set's adapters go: one after each found block (block adapters), or one
beside each targeted layer (layer adapters), and the layers that cannot take one."""

import re
from typing import Dict, List, Optional, Set, Tuple

import torch.nn as nn

from mmslora.registry import MODELS
from .adapter_set import AdapterSet, adapter_key
from .discovery import infer_channels

__all__ = ['build_block_adapters', 'build_layer_adapters', 'functional_layers']

#: why a layer of ``torch.nn.MultiheadAttention`` gets no layer adapter
FUNCTIONAL_REASON = (
    'inside torch.nn.MultiheadAttention, which uses its weights '
    'functionally: a forward hook on it never fires'
)


def build_block_adapters(
    adapter_set: AdapterSet,
    found: Dict[str, Tuple[str, Optional[int]]],
    modules: Dict[str, nn.Module],
) -> AdapterSet:
    """Fill ``adapter_set`` with one adapter of its config per found block (block name
    -> ``(layout, channels or None)``; ``modules``: the backbone's modules by name),
    built with the block's channels (read off the block where ``found`` has none)."""
    for name, (layout, channels) in found.items():
        channels = channels or infer_channels(modules[name])
        adapter_set.modules[adapter_key(name)] = MODELS.build(
            dict(adapter_set.cfg, channels=channels)
        )
        adapter_set.blocks[name] = layout
    return adapter_set


def functional_layers(backbone: nn.Module) -> Set[str]:
    """The names of the modules inside a ``torch.nn.MultiheadAttention`` of
    ``backbone``: it uses their weights directly, so their forward hooks never fire."""
    functional = set()
    for name, module in backbone.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            functional |= {
                f'{name}.{child}' if name else child for child, _ in module.named_modules() if child
            }
    return functional


def build_layer_adapters(
    adapter_set: AdapterSet, backbone: nn.Module, adapter_cls: type
) -> AdapterSet:
    """Fill ``adapter_set`` with ``adapter_cls.from_layer(layer, **cfg)`` for each layer
    of ``adapter_cls.layer_types`` in ``backbone`` whose name ``cfg['targets']`` (a regex
    or a list of them, matched in full; default: every layer) matches. Layers the
    class declines (``skip_reason``) and those of :func:`functional_layers` go to
    ``skipped_layers`` with the reason.

    Raises:
        ValueError: when no layer was adapted (the message lists what was tried and
            candidate layers), or two layer names map to one adapter key.
    """
    cfg = {k: v for k, v in adapter_set.cfg.items() if k not in ('type', 'targets')}
    targets = adapter_set.cfg.get('targets')
    patterns = [targets] if isinstance(targets, str) else list(targets or [])
    layer_types = tuple(adapter_cls.layer_types)
    functional = functional_layers(backbone)
    candidates: List[str] = []
    for name, module in backbone.named_modules():
        if not name or not isinstance(module, layer_types):
            continue
        candidates.append(name)
        if patterns and not any(re.fullmatch(p, name) for p in patterns):
            continue
        reason = FUNCTIONAL_REASON if name in functional else adapter_cls.skip_reason(module)
        if reason:
            adapter_set.skipped_layers[name] = reason
            continue
        key = adapter_key(name)
        if key in adapter_set.modules:
            raise ValueError(f'MSLoRABackbone: two layers map to the adapter key {key!r}.')
        adapter_set.modules[key] = adapter_cls.from_layer(module, **cfg)
        adapter_set.layers.append(name)
    if not adapter_set.layers:
        tried = f'targets {patterns}' if patterns else 'the default targets'
        raise ValueError(
            f'MSLoRABackbone: {adapter_cls.__name__} found no layer of '
            f'{type(backbone).__name__} to adapt ({tried}, layer types '
            f'{[t.__name__ for t in layer_types]}; skipped: '
            f'{dict(list(adapter_set.skipped_layers.items())[:5])}). Candidate layers: '
            f'{candidates[:8]}.'
        )
    return adapter_set
