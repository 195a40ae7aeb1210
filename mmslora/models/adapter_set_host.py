"""The named adapter sets of a wrapped backbone: building, naming, switching, deleting.

:class:`AdapterSetHost` is the base of :class:`~mmslora.models.MSLoRABackbone`; a set
itself (its modules and hooks) is an :class:`~mmslora.models.adapter_set.AdapterSet`.
"""

import contextlib
import functools
import logging
from typing import Dict, Iterator, List, Optional

import torch.nn as nn
from mmengine.logging import print_log

# MMEngine's ModuleDict: init_weights reaches the adapters (torch's has none)
from mmengine.model import ModuleDict

from mmslora._deprecated import deprecated_method
from . import merging
from .adapter_set import AdapterSet, adapter_class
from .base import AdapterHost, BlockAdapter
from .block_presets import find_blocks
from .budget import build_within_default_budget, fit_budget, numel
from .targeting import build_block_adapters, build_layer_adapters
from .token_grid import TokenGrid

__all__ = ['AdapterSetHost', 'DEFAULT_SET']

#: the name of the first set, built from the constructor's ``adapter``; its adapters
#: are ``adapters.*``
DEFAULT_SET = 'default'


def _default_set_record(attr: str, doc: str) -> property:
    """A read-only property: ``attr`` of the first (default) set."""
    return property(lambda self: getattr(self.adapter_set(DEFAULT_SET), attr), doc=doc)


class AdapterSetHost(AdapterHost):
    """Named adapter sets on the module ``self.backbone``.

    The first set is ``'default'``, its adapters under ``adapters.*`` in the state dict;
    each further set (:meth:`add_adapter`) under ``adapter_sets.<name>.*``. One set
    runs and trains at a time (:meth:`set_adapter`), none within
    :meth:`disable_adapters`. A subclass sets ``self.backbone`` and ``self.grid_from``
    (the patch embedding of ``'tokens'`` blocks), then calls :meth:`_init_sets` and
    ``_add_set(DEFAULT_SET, ...)``.
    """

    def _init_sets(self) -> None:
        """Empty storage for the sets (after ``self.backbone``, so its keys come first)."""
        self.adapters = ModuleDict()  # the first set's modules: state-dict keys adapters.*
        self.adapter_sets = ModuleDict()  # the other sets': adapter_sets.<name>.*
        self._sets: Dict[str, AdapterSet] = {}
        self._token_grid = TokenGrid()
        self._active = DEFAULT_SET
        self._enabled = True
        self.notes: List[str] = []  # how a budget was met, for the parameter report

    @property
    def adapter_names(self) -> List[str]:
        """The names of the adapter sets, ``'default'`` first."""
        return list(self._sets)

    @property
    def active_adapter(self) -> str:
        """The set that runs in ``forward`` and trains."""
        return self._active

    def adapter_set(self, name: Optional[str] = None) -> AdapterSet:
        """The :class:`AdapterSet` called ``name`` (default: the active one); its
        ``modules`` are the adapters by :func:`adapter_key`. ``KeyError`` naming the
        sets for an unknown name."""
        name = self._active if name is None else name
        if name not in self._sets:
            raise KeyError(
                f'MSLoRABackbone: no adapter set {name!r}; the sets are {self.adapter_names}.'
            )
        return self._sets[name]

    adapters_of = deprecated_method(
        'MSLoRABackbone.adapters_of(name)',
        'MSLoRABackbone.adapter_set(name).modules',
        lambda self, name=None: self.adapter_set(name).modules,
    )

    def adapter_modules(self) -> nn.Module:
        """Every set's modules (the :class:`~mmslora.models.base.AdapterHost` contract)."""
        return nn.ModuleList([self.adapters, self.adapter_sets])

    adapter_cfg = _default_set_record('cfg', 'The adapter config of the default set.')
    placement = _default_set_record(
        'placement', "``'block'`` or ``'layer'`` for the default set's adapters, None without."
    )
    block_layouts = _default_set_record(
        'blocks', "Block name -> layout of the default set's block adapters."
    )
    layer_names = _default_set_record('layers', "The layers of the default set's layer adapters.")
    skipped_layers = _default_set_record(
        'skipped_layers', "Layers the default set's layer adapter declined, with the reason."
    )

    def add_adapter(
        self, name: str, adapter: dict, blocks=None, budget: Optional[float] = None
    ) -> AdapterSet:
        """Build another adapter set on the same frozen backbone.

        ``adapter``, ``blocks`` and ``budget`` as in the constructor. The new set's
        adapters are under ``adapter_sets.<name>.*`` in the state dict; they start at
        their zero start and stay frozen and inactive until :meth:`set_adapter` picks
        them. ``ValueError`` for a name that is no identifier or is taken, or no config.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f'MSLoRABackbone: adapter set name {name!r} must be a Python '
                f"identifier, e.g. 'coco' or 'task_b'."
            )
        if name in self._sets:
            raise ValueError(
                f'MSLoRABackbone: an adapter set {name!r} exists already; '
                f'delete_adapter({name!r}) first or choose another name.'
            )
        if adapter is None:
            raise ValueError(
                'MSLoRABackbone.add_adapter: give an adapter config, e.g. '
                "dict(type='mmslora.MSLoRAAdapter')."
            )
        added = self._add_set(name, adapter, blocks, budget)
        added.modules.requires_grad_(False)
        return added

    def set_adapter(self, name: str) -> None:
        """Run and train set ``name``: its parameters get ``requires_grad=True``, every
        other set's ``False`` (switching builds nothing). Switch before the optimizer
        and any DDP wrapper are built."""
        self.adapter_set(name)
        if name != self._active:
            merging.check_unmerged(self, f'set_adapter({name!r})')
        for set_name, adapter_set in self._sets.items():
            adapter_set.modules.requires_grad_(set_name == name)
        self._active = name

    def delete_adapter(self, name: str) -> None:
        """Remove set ``name`` (not the default set) and its hooks."""
        if name == DEFAULT_SET:
            raise ValueError(
                'MSLoRABackbone: the default adapter set cannot be deleted; '
                'build the wrapper with adapter=None for none.'
            )
        adapter_set = self.adapter_set(name)
        if merging.merged_set(self) == name:
            merging.check_unmerged(self, f'delete_adapter({name!r})')
        adapter_set.detach()
        del self._sets[name]
        del self.adapter_sets[name]
        if self._active == name:
            self.set_adapter(DEFAULT_SET)

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator['AdapterSetHost']:
        """Within the context the wrapper computes the plain frozen backbone, exactly
        (``RuntimeError`` while a set is merged: :meth:`unmerge_adapters` first)."""
        merging.check_unmerged(self, 'disable_adapters()')
        enabled, self._enabled = self._enabled, False
        try:
            yield self
        finally:
            self._enabled = enabled

    def remove_adapters(self) -> None:
        """Detach every adapter hook: from now on ``forward`` is the plain backbone's.
        The adapter modules (and their state-dict keys) stay."""
        for adapter_set in self._sets.values():
            adapter_set.detach()
        self._token_grid.detach()

    def _runs(self, set_name: str) -> bool:
        """Whether the hooks of set ``set_name`` act in this forward."""
        return self._enabled and self._active == set_name

    def _add_set(
        self, name: str, adapter: Optional[dict], blocks, budget: Optional[float] = None
    ) -> AdapterSet:
        """Build, hook and store the set ``name`` (``adapter`` None: an empty set)."""
        if adapter is not None and not (isinstance(adapter, dict) and 'type' in adapter):
            raise TypeError(
                "MSLoRABackbone: `adapter` must be None or a config dict with a 'type', e.g. "
                f"dict(type='mmslora.MSLoRAAdapter'); got {adapter!r}."
            )
        modules = dict(self.backbone.named_modules())
        if adapter is None:
            adapter_set = AdapterSet(name, None, ModuleDict())
        else:
            adapter_set = self._build_set(name, adapter, blocks, budget, modules)
        if 'tokens' in adapter_set.blocks.values() and not self._token_grid.attached:
            self._token_grid.attach(_grid_module(modules, self.grid_from))
        adapter_set.attach(modules, self._runs, self._token_grid)
        # stored only once built: a set that fails to build leaves nothing behind
        if self._sets:
            self.adapter_sets[name] = adapter_set.modules
        else:
            self.adapters = adapter_set.modules
        self._sets[name] = adapter_set
        adjusted = sorted({m.adjustment for m in adapter_set.modules.values() if m.adjustment})
        if adjusted:  # once per set, not once per adapter
            print_log(
                f'MSLoRABackbone: adapter set {name!r}: {"; ".join(adjusted)}; give '
                f'fitting values (or strict_groups=True to refuse them).',
                logger='current',
                level=logging.WARNING,
            )
        return adapter_set

    def _build_set(
        self,
        name: str,
        adapter: dict,
        blocks,
        budget: Optional[float],
        modules: Dict[str, nn.Module],
    ) -> AdapterSet:
        """The set ``name`` of ``adapter`` at the width its config or ``budget`` gives."""
        adapter_cls = adapter_class(adapter)
        if issubclass(adapter_cls, BlockAdapter):
            found = find_blocks(self.backbone, blocks, self.grid_from)
            fill = functools.partial(build_block_adapters, found=found, modules=modules)
        elif blocks is not None:
            raise ValueError(
                f'MSLoRABackbone: `blocks` selects blocks for block adapters, but '
                f'{adapter_cls.__name__} is a LayerAdapter; select its layers with '
                f'`targets` in the adapter config instead.'
            )
        else:
            fill = functools.partial(
                build_layer_adapters, backbone=self.backbone, adapter_cls=adapter_cls
            )

        def build(cfg: dict) -> AdapterSet:
            return fill(AdapterSet(name, cfg, ModuleDict()))

        size = numel(self.backbone)
        if budget is None:
            return build_within_default_budget(build, adapter, adapter_cls, name, size, self._note)
        return fit_budget(build, adapter, adapter_cls, name, budget, size, self._note)

    def _note(self, note: str, level: int = logging.INFO) -> None:
        """Log ``note`` and keep it for the parameter report."""
        self.notes.append(note)
        print_log(f'MSLoRABackbone: {note}', logger='current', level=level)


def _grid_module(modules: Dict[str, nn.Module], grid_from: str) -> nn.Module:
    """The module ``grid_from`` names; ``ValueError`` naming candidates if none."""
    if grid_from not in modules:
        raise ValueError(
            f"MSLoRABackbone: layout 'tokens' needs the patch grid, but the backbone "
            f"has no module {grid_from!r}; set grid_from to the patch "
            f'embedding (e.g. one of {[n for n in modules if "embed" in n][:5]}).'
        )
    return modules[grid_from]
