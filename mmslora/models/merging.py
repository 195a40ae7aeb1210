"""Merging layer adapters into the backbone's weights, and plain upstream checkpoints.

A layer adapter whose update is linear in the layer's input (LoRA:
``delta_weight() = (alpha / r) B A``, :meth:`~mmslora.models.base.LayerAdapter.delta_weight`)
folds into the layer it sits beside::

    layer(x) + adapter(x) = W x + b + dW x = (W + dW) x + b

:func:`merge` writes ``W + dW`` into the weight of every layer of the wrapper's active
set (in place, without autograd) and marks each adapter ``merged``; the wrapper's hook
then adds nothing, so the layers run at the plain backbone's cost. :func:`unmerge`
restores the weights: bitwise from a copy of the originals (``keep_original=True``,
the default; memory: one copy of every merged weight), or as ``(W + dW) - dW``, equal
to ``W`` up to float rounding, with ``keep_original=False``. Both run under
``torch.no_grad()`` and change the weights in place, which bumps their version counter:
caches keyed on it (the frozen fast path's folded BN weights) recompute.

While a set is merged:

* the wrapper's state dict stays the unmerged one (original weights plus adapters), so
  a checkpoint saved meanwhile loads into any wrapper; :func:`upstream_state_dict` gives
  the merged weights under the upstream model's keys;
* switching sets (``set_adapter``), deleting the set and ``disable_adapters()`` are
  refused (each would run another set, or none, on weights that hold this one);
* the adapters' parameters take no part in the forward (no gradients reach them).
  A weight that trains (``freeze=False``) keeps training: :func:`unmerge` then
  subtracts ``dW`` from the trained weight instead of restoring the original;
* loading a state dict into the wrapper is not supported: unmerge first.

Block adapters (MSLoRA, Mona, the bottleneck Adapter) compute ``F + H(F)`` with a
nonlinear ``H`` of a block's output: no weight can absorb them; they stay modules and
are exported as adapter files (``mmslora-export-adapter``).
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from torch.utils.hooks import RemovableHandle

from mmslora.compat.torch import register_state_dict_post_hook
from mmslora.utils.config import shipped_config
from .base import AdapterHost, BlockAdapter, LayerAdapter, find_wrappers

__all__ = [
    'merge',
    'unmerge',
    'merged_set',
    'unmergeable_reason',
    'check_unmerged',
    'upstream_state_dict',
    'upstream_config',
    'MERGE_ATTR',
]

#: attribute (in the wrapper's ``__dict__``) with the record of its merged set
MERGE_ATTR = '_mmslora_merge'
#: the wrapper's type names in a config
WRAPPER_TYPES = ('mmslora.MSLoRABackbone', 'MSLoRABackbone')
#: the shared base config whose variables a plain config drops
BASE_CONFIG = '_base_/mslora.py'


@dataclass(eq=False)
class LayerMerge:
    """One merged layer: ``name`` in the backbone, its ``layer`` and ``adapter``, the
    weight before merging (``original``, None without ``keep_original``), and the
    version counters of the weight and the adapter's parameters right after merging."""

    name: str
    layer: nn.Module
    adapter: LayerAdapter
    original: Optional[torch.Tensor]
    version: int
    adapter_versions: Tuple[int, ...]

    def weight_changed(self) -> bool:
        return self.layer.weight._version != self.version

    def _adapter_versions(self) -> Tuple[int, ...]:
        return tuple(p._version for p in self.adapter.parameters())

    def adapter_changed(self) -> bool:
        return self._adapter_versions() != self.adapter_versions

    def __deepcopy__(self, memo) -> 'LayerMerge':
        """A copy for a copied wrapper: tensors copied restart their version counters,
        so the copy records the copies' versions (or marks them changed)."""
        twin = LayerMerge(
            self.name,
            *(copy.deepcopy(v, memo) for v in (self.layer, self.adapter, self.original)),
            -1,
            (),
        )
        if not self.weight_changed():
            twin.version = twin.layer.weight._version
        if not self.adapter_changed():
            twin.adapter_versions = twin._adapter_versions()
        memo[id(self)] = twin
        return twin

    def unmerged_weight(self) -> torch.Tensor:
        """The weight without the update: the original where it is kept and the weight
        did not change since, else ``W - dW`` (``RuntimeError`` where the adapter
        changed too, so ``dW`` is no longer the update that was added)."""
        if self.original is not None and not self.weight_changed():
            return self.original
        if self.adapter_changed():
            raise RuntimeError(
                f'merged layer {self.name!r}: its adapter changed while merged (a load or '
                f'an optimizer step), so the update it added cannot be taken out again. '
                f'Rebuild the model and load its checkpoint; merge only to run or export.'
            )
        weight = self.layer.weight.detach()
        return weight - _delta(self.adapter, weight, self.name)


@dataclass(eq=False)
class MergeRecord:
    """The merged set of one wrapper: its name, its layers, and the handle of the
    state-dict hook that writes the unmerged weights."""

    set_name: str
    layers: List[LayerMerge]
    handle: RemovableHandle


def merged_set(wrapper: AdapterHost) -> Optional[str]:
    """The name of the set merged into ``wrapper``'s weights, or None."""
    record = wrapper.__dict__.get(MERGE_ATTR)
    return None if record is None else record.set_name


def unmergeable_reason(adapter_set) -> Optional[str]:
    """Why the adapters of ``adapter_set`` (an :class:`~mmslora.models.AdapterSet`)
    cannot be merged into the backbone's weights, or None when they can."""
    adapters = list(adapter_set.modules.values())
    if not adapters:
        return (
            f'adapter set {adapter_set.name!r} has no adapters (linear probe, BitFit '
            f'or full fine-tuning): there is nothing to merge'
        )
    cls = type(adapters[0])
    if isinstance(adapters[0], BlockAdapter):
        return (
            f'adapter set {adapter_set.name!r} holds {cls.__name__} block adapters: '
            f"MSLoRA/Mona/Adapter reweight a block's output nonlinearly and stay "
            f'modules; export them with mmslora-export-adapter (adapter files that '
            f'mmslora.models.load_adapter loads) instead'
        )
    if not cls.can_merge():
        return (
            f'adapter set {adapter_set.name!r} holds {cls.__name__} layer adapters, '
            f'which have no delta_weight(): their update is not a weight to add'
        )
    return None


def check_unmerged(wrapper: AdapterHost, action: str) -> None:
    """``RuntimeError`` if a set of ``wrapper`` is merged: ``action`` (e.g.
    ``"set_adapter('b')"``) would run another set, or none, on merged weights."""
    name = merged_set(wrapper)
    if name is not None:
        raise RuntimeError(
            f'MSLoRABackbone: {action} while adapter set {name!r} is merged into the '
            f"backbone's weights would run on weights that hold that set's update; call "
            f'unmerge_adapters() first.'
        )


def _delta(adapter: LayerAdapter, weight: torch.Tensor, name: str) -> torch.Tensor:
    """``adapter.delta_weight()`` as a tensor like ``weight`` (no autograd)."""
    with torch.no_grad():
        delta = adapter.delta_weight().detach().to(dtype=weight.dtype, device=weight.device)
    if delta.shape != weight.shape:
        raise ValueError(
            f'{type(adapter).__name__} of layer {name!r}: delta_weight() has '
            f'shape {tuple(delta.shape)}, the weight {tuple(weight.shape)}.'
        )
    return delta


def _layers_to_merge(wrapper: AdapterHost, name: Optional[str]) -> Tuple[str, list]:
    """``(set name, [(layer name, layer, adapter)])`` of the set to merge; errors for a
    set that is not active, one merged already, or one that cannot merge."""
    adapter_set = wrapper.adapter_set(name)
    if merged_set(wrapper) is not None:
        raise RuntimeError(
            f'MSLoRABackbone: adapter set {merged_set(wrapper)!r} is merged '
            f'already; unmerge_adapters() before merging again.'
        )
    if adapter_set.name != wrapper.active_adapter:
        raise ValueError(
            f'MSLoRABackbone: adapter set {adapter_set.name!r} is not the active set '
            f'({wrapper.active_adapter!r}); only the set that runs can be merged: '
            f'set_adapter({adapter_set.name!r}) first.'
        )
    reason = unmergeable_reason(adapter_set)
    if reason:
        raise ValueError(f'MSLoRABackbone: cannot merge: {reason}.')
    modules = dict(wrapper.backbone.named_modules())
    layers = [
        (layer, modules[layer], adapter_set.modules[key])
        for layer, key in zip(adapter_set.layers, adapter_set.modules)
    ]
    shared = {}
    for layer, module, _ in layers:
        shared.setdefault(id(module.weight), []).append(layer)
    tied = [names for names in shared.values() if len(names) > 1]
    if tied:
        raise ValueError(
            f'MSLoRABackbone: cannot merge: layers {tied[0]} share one weight, '
            f'which cannot hold both their updates.'
        )
    return adapter_set.name, layers


def merge(
    wrapper: AdapterHost, name: Optional[str] = None, safe: bool = True, keep_original: bool = True
) -> List[str]:
    """Merge the layer adapters of set ``name`` (default: the active set) into the
    backbone's weights; returns the merged layers' names.

    ``safe``: first check that every merged weight is finite, and merge nothing if one
    is not (``ValueError`` naming the layers). ``keep_original``: keep a copy of each
    weight for a bitwise :func:`unmerge`. Raises ``ValueError`` for a set that is not
    active or cannot merge (block adapters, layer adapters without ``delta_weight``, a
    set without adapters), ``RuntimeError`` if a set is merged already.
    """
    set_name, layers = _layers_to_merge(wrapper, name)
    with torch.no_grad():
        if safe:
            bad = [
                layer
                for layer, module, adapter in layers
                if not torch.isfinite(module.weight + _delta(adapter, module.weight, layer)).all()
            ]
            if bad:
                raise ValueError(
                    f'MSLoRABackbone: merging set {set_name!r} would give '
                    f'non-finite weights in {bad[:5]} ({len(bad)} layers); '
                    f'nothing was merged. Check the adapter weights.'
                )
        merges = []
        for layer, module, adapter in layers:
            weight = module.weight
            delta = _delta(adapter, weight, layer)
            original = weight.detach().clone() if keep_original else None
            weight.add_(delta)
            adapter.merged = True
            merge = LayerMerge(layer, module, adapter, original, weight._version, ())
            merge.adapter_versions = merge._adapter_versions()
            merges.append(merge)
    record = MergeRecord(set_name, merges, None)
    record.handle = register_state_dict_post_hook(wrapper, _StateDictHook(record))
    wrapper.__dict__[MERGE_ATTR] = record
    return [item.name for item in merges]


def unmerge(wrapper: AdapterHost) -> List[str]:
    """Take the merged set's update out of the backbone's weights again (bitwise where
    the original was kept and the weight has not changed since; see the module
    docstring); returns the layers' names. ``RuntimeError`` when nothing is merged."""
    record = wrapper.__dict__.get(MERGE_ATTR)
    if record is None:
        raise RuntimeError(
            'MSLoRABackbone: no adapter set is merged; nothing to unmerge '
            '(merge_adapters() merges the active set).'
        )
    with torch.no_grad():
        restored = [(item, item.unmerged_weight()) for item in record.layers]
        for item, weight in restored:
            item.layer.weight.copy_(weight)
            item.adapter.merged = False
    record.handle.remove()
    del wrapper.__dict__[MERGE_ATTR]
    return [item.name for item in record.layers]


class _StateDictHook:
    """Writes the unmerged weights of a merged set into the wrapper's state dict (a
    class, not a closure, so ``copy.deepcopy`` of the wrapper hooks the copy's own
    record)."""

    def __init__(self, record: MergeRecord) -> None:
        self.record = record

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        for item in self.record.layers:
            key = f'{prefix}backbone.{item.name}.weight'
            if key in state_dict and not isinstance(state_dict[key], nn.Parameter):
                state_dict[key] = item.unmerged_weight().detach()


# ---------------------------------------------------------------- upstream
def _wrapper_prefixes(model: nn.Module) -> Dict[str, AdapterHost]:
    """``'<path>.'`` (``''`` for the model itself) -> adapter host, longest first;
    ``ValueError`` for a host whose active set has adapters and is not merged."""
    prefixes = {}
    for path, wrapper in find_wrappers(model).items():
        adapter_set = wrapper.adapter_set()
        if len(adapter_set.modules) and merged_set(wrapper) != adapter_set.name:
            reason = unmergeable_reason(adapter_set) or (
                f'adapter set {adapter_set.name!r} is not merged; call merge_adapters() on it first'
            )
            raise ValueError(
                f'upstream_state_dict: the wrapper at {path or "the model"!r} '
                f'runs adapters that no upstream weight holds: {reason}.'
            )
        prefixes[f'{path}.' if path else ''] = wrapper
    return dict(sorted(prefixes.items(), key=lambda item: -len(item[0])))


def _upstream_key(key: str, prefixes: Dict[str, AdapterHost]) -> Optional[str]:
    """``key`` of the adapted model as the upstream model has it (``<path>.backbone.X``
    -> ``<path>.X``), or None for a key the upstream model has not (adapters)."""
    for prefix in prefixes:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if rest.startswith('backbone.'):
                return prefix + rest[len('backbone.') :]
            return None  # adapters.*, adapter_sets.*: no upstream counterpart
    return key


def upstream_state_dict(model: nn.Module) -> 'OrderedDict[str, torch.Tensor]':
    """The state dict of ``model`` as the upstream model (every
    :class:`~mmslora.models.MSLoRABackbone` replaced by the backbone it wraps) has it:
    keys ``<path>.backbone.*`` become ``<path>.*`` and carry the merged weights;
    adapter keys are dropped. Every wrapper's active set must be merged or hold no
    adapters (``ValueError`` naming the set and why otherwise: block adapters, which
    stay modules, or a set not merged yet). The tensors are the model's own (detached,
    not copied)."""
    prefixes = _wrapper_prefixes(model)
    state = model.state_dict()
    for prefix, wrapper in prefixes.items():
        record = wrapper.__dict__.get(MERGE_ATTR)
        for item in record.layers if record else []:
            state[f'{prefix}backbone.{item.name}.weight'] = item.layer.weight.detach()
    out = OrderedDict()
    for key, value in state.items():
        new_key = _upstream_key(key, prefixes)
        if new_key is not None:
            out[new_key] = value
    metadata = OrderedDict()  # the modules' state-dict versions (BN's, say), renamed
    for key, value in getattr(state, '_metadata', {}).items():
        new_key = _upstream_key(f'{key}.', prefixes) if key else ''
        if new_key is not None:
            metadata[new_key[:-1] if new_key.endswith('.') else new_key] = value
    out._metadata = metadata
    return out


def _is_wrapper_cfg(node) -> bool:
    kind = node.get('type')
    return kind in WRAPPER_TYPES or getattr(kind, '__name__', None) == 'MSLoRABackbone'


def _unwrapped(node):
    """``node`` (a config value) with every wrapper config replaced by its ``backbone``."""
    if isinstance(node, dict):
        if _is_wrapper_cfg(node):
            return _unwrapped(node['backbone'])
        return type(node)({key: _unwrapped(value) for key, value in node.items()})
    if isinstance(node, (list, tuple)):
        return type(node)(_unwrapped(value) for value in node)
    return node


def _mmslora_names(node, path: str = '') -> List[str]:
    """The config paths in ``node`` whose value names an mmslora type or module."""
    if isinstance(node, dict):
        return [
            p
            for key, value in node.items()
            for p in _mmslora_names(value, f'{path}.{key}' if path else str(key))
        ]
    if isinstance(node, (list, tuple)):
        return [p for i, value in enumerate(node) for p in _mmslora_names(value, f'{path}[{i}]')]
    name = node if isinstance(node, str) else getattr(node, '__module__', '') or ''
    return [path] if name.startswith(('mmslora.', 'mmslora::')) or name == 'mmslora' else []


def upstream_config(cfg: Config) -> Tuple[Config, List[str]]:
    """``(plain, leftovers)``: a copy of ``cfg`` for the upstream toolbox alone, whose
    model has every wrapper config replaced by the backbone config it wraps, without
    mmslora in ``custom_imports``, mmslora's optimizer constructor, mmslora hooks or
    the variables of ``mmslora::_base_/mslora.py`` (``mslora_backbone``, ...);
    and the config paths that still name mmslora (a backbone of mmslora's own, say:
    building those needs mmslora)."""
    plain = copy.deepcopy(cfg)
    plain.model = _unwrapped(plain.model)
    for key in Config.fromfile(shipped_config(BASE_CONFIG)).keys():
        plain.pop(key, None)  # mslora_backbone, ...: the shared base's variables
    imports = plain.get('custom_imports')
    if imports:
        kept = [m for m in imports.get('imports', []) if not m.startswith('mmslora')]
        if kept:
            imports['imports'] = kept
        else:
            del plain['custom_imports']
    optim = plain.get('optim_wrapper')
    if isinstance(optim, dict) and str(optim.get('constructor', '')).startswith('mmslora.'):
        del optim['constructor']
    if plain.get('custom_hooks'):
        plain.custom_hooks = [
            hook
            for hook in plain.custom_hooks
            if not str(hook.get('type', '')).startswith('mmslora.')
        ]
    return plain, _mmslora_names(plain.to_dict())
