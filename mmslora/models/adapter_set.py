"""One named set of adapters on a wrapped backbone: its modules and the forward hooks
that apply them (:class:`~mmslora.models.MSLoRABackbone` holds one or more sets)."""

import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from mmslora.registry import MODELS
from .base import BlockAdapter, LayerAdapter
from .layouts import apply_in_layout
from .token_grid import TokenGrid

__all__ = ['AdapterSet', 'adapter_key', 'adapter_class']


def adapter_class(cfg: dict) -> type:
    """The class the adapter config ``cfg`` builds.

    Raises:
        KeyError: for a type that is not registered.
        TypeError: for a class that implements neither adapter base.
    """
    adapter_type = cfg['type']
    cls = adapter_type if isinstance(adapter_type, type) else MODELS.get(adapter_type)
    if cls is None:
        raise KeyError(
            f'MSLoRABackbone: adapter type {adapter_type!r} is not registered; '
            f"write it fully scoped, e.g. 'mmslora.MSLoRAAdapter' or 'mmslora.LoRA'."
        )
    if not (isinstance(cls, type) and issubclass(cls, (BlockAdapter, LayerAdapter))):
        raise TypeError(
            f'MSLoRABackbone: adapter type {adapter_type!r} ({cls!r}) implements neither '
            f'mmslora.models.BlockAdapter (after blocks: forward(F) = F + residual(F)) nor '
            f'mmslora.models.LayerAdapter (beside layers: from_layer, forward(x) = update); '
            f'derive it from one of them (README, "Your own adapter").'
        )
    return cls


def adapter_key(module_name: str) -> str:
    """The key of the adapter of backbone module ``module_name`` in its set's
    ``ModuleDict`` (``'layer1.0'`` -> ``'layer1_0'``)."""
    return module_name.replace('.', '_')


@dataclass
class AdapterSet:
    """One named set of adapters on the wrapped backbone.

    A block adapter ``H`` after block ``F`` makes the block return ``F + H(F)`` (in the
    block's layout, :func:`~mmslora.models.layouts.apply_in_layout`); a layer adapter
    ``A`` beside layer ``L`` makes it return ``L(x) + A(x)``, or ``L(x)`` while the
    adapter is merged into the layer (its ``merged`` is True).

    Attributes:
        name (str): the set's name (``'default'`` for the constructor's adapter).
        cfg (dict | None): the adapter config it was built from.
        modules (nn.ModuleDict): the adapters, keyed by :func:`adapter_key`.
        blocks (dict[str, str]): block name -> layout, for block adapters.
        layers (list[str]): the adapted layers, for layer adapters.
        skipped_layers (dict[str, str]): layers a layer adapter declined, with why.
        handles (list): the forward hooks :meth:`attach` registered.
    """

    name: str
    cfg: Optional[dict]
    modules: nn.ModuleDict
    blocks: Dict[str, str] = field(default_factory=dict)
    layers: List[str] = field(default_factory=list)
    skipped_layers: Dict[str, str] = field(default_factory=dict)
    handles: list = field(default_factory=list, repr=False, compare=False)

    @property
    def placement(self) -> Optional[str]:
        """``'block'``, ``'layer'``, or None for a set without adapters."""
        return 'block' if self.blocks else 'layer' if self.layers else None

    def attach(
        self, modules: Dict[str, nn.Module], runs: Callable[[str], bool], grid: TokenGrid
    ) -> None:
        """Hook the adapters onto their blocks and layers (``modules``: the backbone's
        modules by name). The hooks act while ``runs(self.name)`` is True; block
        hooks read the patch grid and input size from ``grid``."""
        # bound methods in partials (not closures), so copy.deepcopy of the wrapper
        # (EMA models, mean teachers) hooks the copy's own adapters
        for name, layout in self.blocks.items():
            hook = functools.partial(self._block_hook, runs, grid, adapter_key(name), layout)
            self.handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))
        for name in self.layers:
            hook = functools.partial(self._layer_hook, runs, adapter_key(name))
            self.handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def detach(self) -> None:
        """Remove the set's hooks; its modules stay."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _block_hook(
        self, runs, grid: TokenGrid, key: str, layout: str, module, args, kwargs, output
    ):
        if not runs(self.name):
            return None
        adapter = self.modules[key]
        if isinstance(output, (tuple, list)):
            first = apply_in_layout(
                adapter,
                output[0],
                layout,
                args,
                kwargs,
                grid.grid,
                tuple(output[1:]),
                grid.input_hw,
            )
            return type(output)([first, *output[1:]])
        return apply_in_layout(
            adapter, output, layout, args, kwargs, grid.grid, input_hw=grid.input_hw
        )

    def _layer_hook(self, runs, key: str, module, args, kwargs, output):
        adapter = self.modules[key]
        if not runs(self.name) or getattr(adapter, 'merged', False):
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        return output + adapter(x)
