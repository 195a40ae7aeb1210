"""The adapter contract: what :class:`~mmslora.models.MSLoRABackbone` expects of an adapter.

Two kinds of adapters, one abstract base each; the wrapper tells them apart with
``isinstance`` and refuses a class that derives from neither.

* :class:`BlockAdapter`: goes after a block. Input the block's output as a
  (B, C, H, W) map ``F`` (the wrapper converts token layouts), output of the same
  shape::

      forward(F) = F + residual(F)          residual: (B, C, H, W) -> (B, C, H, W)

  Built by the wrapper as ``cls(channels=C, **cfg)`` for each block. Subclasses
  implement :meth:`BlockAdapter.residual`; the shape check, dropout module and
  gradient checkpointing (``with_cp``) are shared. MSLoRA, the bottleneck adapter
  and Mona are block adapters.
* :class:`LayerAdapter`: goes beside one of the backbone's own layers
  (``nn.Linear``, ``nn.Conv2d``, ...). Input the layer's input ``x``, output the update
  that the wrapper adds to the layer's output::

      layer(x) + forward(x),               forward: x -> update shaped like layer(x)

  Built by ``cls.from_layer(layer, **cfg)`` for each layer of ``cls.layer_types`` that
  ``cls.skip_reason(layer)`` accepts. LoRA is a layer adapter; a linear update also
  has :meth:`LayerAdapter.delta_weight` to merge it into the layer's weight
  (:mod:`mmslora.models.merging`).

Zero start, for both: an adapter whose update is zero at construction lists the
parameters that make it so in ``zero_init`` (e.g. ``('proj.up.weight',)``).
``init_weights()`` runs the MMEngine ``init_cfg`` as usual and then sets those
parameters back to zero (with a warning naming them if the ``init_cfg`` had changed
them), so whatever ``init_cfg`` says, the adapted model computes the frozen model
until training moves it. ``init_cfg=dict(type='Pretrained', ...)`` (loading trained
adapter weights) is left alone.
"""

import logging
from abc import abstractmethod
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.utils.checkpoint import checkpoint

from mmslora.compat.torch import records_autograd

__all__ = ['AdapterBase', 'BlockAdapter', 'LayerAdapter', 'AdapterHost', 'find_wrappers']


def _loads_pretrained(init_cfg) -> bool:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)


class AdapterBase(BaseModule):
    """What block and layer adapters share: the zero-start guarantee.

    Class attributes:
        zero_init (tuple[str]): names (as in ``named_parameters()``) of the
            parameters that are zero at start and make the update zero. Empty for an
            adapter without a zero start (the wrapper then cannot promise that the
            adapted model equals the frozen one at step 0).
        width_arg (str | None): the constructor argument that sets the adapter's width
            (``hidden_dim``, LoRA's ``rank``); the wrapper's ``budget`` scales it, and
            so does its default 5% bound where a config gives no width.
        adjustment (str | None): set by an adapter that changed an argument to fit its
            layer (e.g. fewer groups); the parameter report lists it.
    """

    zero_init: Tuple[str, ...] = ()
    width_arg: Optional[str] = 'hidden_dim'
    adjustment: Optional[str] = None

    def zero_start_(self) -> None:
        """Set the ``zero_init`` parameters to zero (in place, without autograd)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name in self.zero_init:
                params[name].zero_()

    def init_weights(self) -> None:
        """Run the ``init_cfg``, then restore the zero start (see the module docstring).
        Like MMEngine's, a second call on an initialised adapter changes nothing."""
        initialised = self.is_init
        super().init_weights()
        if initialised or _loads_pretrained(self.init_cfg):
            return
        params = dict(self.named_parameters())
        changed = [n for n in self.zero_init if params[n].detach().abs().sum() > 0]
        if changed:
            print_log(
                f'{type(self).__name__}: init_cfg={self.init_cfg!r} re-initialised '
                f'{changed}, which must start at zero so the adapted model equals the '
                f'frozen one at step 0; set back to zero. To initialise them anyway, '
                f"exclude them from the init_cfg's layer types.",
                logger='current',
                level=logging.WARNING,
            )
        self.zero_start_()


class BlockAdapter(AdapterBase):
    """Base of adapters after a block: ``forward(F) = F + residual(F)`` on (B, C, H, W).

    Args:
        channels (int): C, channels of the block output (the wrapper infers them).
        dropout (float): probability of the dropout module ``self.dropout``, which
            subclasses apply where their method puts it (an ``nn.Identity`` at 0).
            Default 0.
        with_cp (bool): gradient checkpointing: keep only the adapter's input from
            forward to backward and recompute the rest there (less memory, one more
            adapter forward per step; same values). Default False.
        init_cfg (dict, optional): MMEngine init config (the zero start is kept).
    """

    placement = 'block'

    def __init__(
        self, channels: int, dropout: float = 0.0, with_cp: bool = False, init_cfg=None
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f'{type(self).__name__}: channels must be a positive int, got {channels!r}.'
            )
        if not 0 <= dropout < 1:
            raise ValueError(f'{type(self).__name__}: dropout must be in [0, 1), got {dropout!r}.')
        self.channels = channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.with_cp = with_cp

    @abstractmethod
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``H(F)``: (B, C, H, W) -> (B, C, H, W), zero at start for a zero-start method."""

    def residual_and_gate(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(H(F), gate)`` for visualisation; ``gate`` is the (B, C, H, W) attention the
        method multiplies by, or None for a method without one."""
        return self.residual(x), None

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """``F + H(F)``; a subclass may override it with a faster computation of the same
        values (MSLoRA's fused path)."""
        return x + self.residual(x)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a (B, channels, H, W) map."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f'{type(self).__name__} expects a (B, {self.channels}, H, W) feature map, '
                f'got shape {tuple(x.shape)}; check the layout given to the wrapper for '
                f'this block.'
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if (
            self.with_cp
            and records_autograd()
            and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        ):
            return checkpoint(self.adapt, x, use_reentrant=False)
        return self.adapt(x)


class LayerAdapter(AdapterBase):
    """Base of adapters beside one of the backbone's layers: the wrapper computes
    ``layer(x) + adapter(x)``; ``forward(x)`` returns the update only.

    Class attribute:
        layer_types (tuple[type]): the layer classes offered to the adapter.

    Attribute:
        merged (bool): True while the update is merged into the layer's weight
            (:mod:`mmslora.models.merging`); the wrapper then adds nothing to the
            layer's output. False at construction.

    Subclasses implement :meth:`from_layer` and ``forward``; :meth:`skip_reason` (which
    layers of ``layer_types`` to decline) and :meth:`delta_weight` (for updates that
    merge into the layer's weight; :meth:`can_merge` says whether a class has it) are
    optional.
    """

    placement = 'layer'
    layer_types: Tuple[type, ...] = (nn.Linear, nn.Conv2d)
    merged: bool = False

    @classmethod
    def skip_reason(cls, layer: nn.Module) -> Optional[str]:
        """Why ``layer`` gets no adapter (listed in the wrapper's ``skipped_layers``),
        or None when it is supported. Default: every layer of ``layer_types``."""
        return None

    @classmethod
    @abstractmethod
    def from_layer(cls, layer: nn.Module, **kwargs) -> 'LayerAdapter':
        """The adapter of ``layer``, with the config's ``kwargs``."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update of the layer's output for its input ``x``."""

    def delta_weight(self) -> torch.Tensor:
        """The update as a tensor in the layer's weight shape, for methods whose update
        is linear in ``x`` (``W + delta_weight()`` then computes layer + adapter, at
        eval: dropout inside the adapter is the identity there)."""
        raise NotImplementedError(
            f'{type(self).__name__} cannot be merged into the layer\'s weight.'
        )

    @classmethod
    def can_merge(cls) -> bool:
        """Whether the class implements :meth:`delta_weight`, so that its update can
        be merged into the layer's weight."""
        return cls.delta_weight is not LayerAdapter.delta_weight


class AdapterHost(BaseModule):
    """Base of the modules that carry adapters on a wrapped, frozen ``backbone``
    (:class:`~mmslora.models.MSLoRABackbone`). Parameter counting, adapter files and
    reweighting maps find them in a model with :func:`find_wrappers`.

    Subclasses set ``self.backbone`` (the wrapped module) and ``self.notes`` (lines for
    the parameter report, e.g. how a parameter budget was met) and implement
    :meth:`adapter_modules`.
    """

    backbone: nn.Module
    notes: List[str]

    @abstractmethod
    def adapter_modules(self) -> nn.Module:
        """A module holding every adapter the host carries (all sets)."""


def find_wrappers(model: nn.Module) -> Dict[str, AdapterHost]:
    """The adapter hosts in ``model`` by module name (``''`` for ``model`` itself)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterHost)}
