"""Adapter widths that keep an adapter set within a share of the backbone's parameters.

A set's size grows with its adapters' width (the class's ``width_arg``:
``hidden_dim``, LoRA's ``rank``); :func:`fit_budget` picks the widest of
:data:`BUDGET_WIDTHS` whose set has at most ``budget * backbone parameters``.
"""

import copy
import inspect
import logging
from typing import Callable, Tuple

import torch.nn as nn

from .adapter_set import AdapterSet, adapter_class

__all__ = [
    'BUDGET_WIDTHS',
    'DEFAULT_BUDGET',
    'with_default_width',
    'fit_budget',
    'build_within_default_budget',
]

#: adapter widths tried, widest first, to meet a parameter ``budget``
BUDGET_WIDTHS = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 2, 1)
#: the share of the backbone that adapters built without a width stay within
DEFAULT_BUDGET = 0.05

#: builds the set of one adapter config
Build = Callable[[dict], AdapterSet]
#: logs a note for the parameter report, at a logging level
Note = Callable[..., None]


def with_default_width(adapter: dict) -> dict:
    """A copy of the adapter config ``adapter`` with its width (the class's
    ``width_arg``: ``hidden_dim``, LoRA's ``rank``) set to the class default where the
    config gives none; unchanged for a class without a width or without a default."""
    adapter = copy.deepcopy(adapter)
    adapter_cls = adapter_class(adapter)
    arg = adapter_cls.width_arg
    if arg is not None and arg not in adapter:
        param = inspect.signature(adapter_cls.__init__).parameters.get(arg)
        if param is not None and param.default is not inspect.Parameter.empty:
            adapter[arg] = param.default
    return adapter


def numel(module: nn.Module) -> int:
    """The number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def build_within_default_budget(
    build: Build, adapter: dict, adapter_cls: type, set_name: str, backbone_size: int, note: Note
) -> AdapterSet:
    """The set ``set_name`` at the width the config gives (kept, with a warning note,
    above :data:`DEFAULT_BUDGET` of the ``backbone_size`` parameters), or without one at
    the class default, fitted to :data:`DEFAULT_BUDGET` where the default exceeds it."""
    arg = adapter_cls.width_arg
    where = f'{adapter_cls.__name__} (set {set_name!r})'
    cfg = with_default_width(adapter)
    adapter_set = build(cfg)
    share = numel(adapter_set.modules) / max(backbone_size, 1)
    if share <= DEFAULT_BUDGET:
        return adapter_set
    if arg in cfg and arg not in adapter:  # the class default: fit it
        note(
            f'{where}: the default {arg}={cfg[arg]} would be {share:.3%} of the '
            f'backbone; fitting the width to {DEFAULT_BUDGET:.0%} (give {arg} to '
            f'choose it)'
        )
        return fit_budget(
            build, adapter, adapter_cls, set_name, DEFAULT_BUDGET, backbone_size, note, strict=False
        )
    if arg in adapter:
        width = f' with {arg}={cfg[arg]} as given'
        fix = f'drop {arg} to fit the width, or set budget={DEFAULT_BUDGET}'
    else:  # no width to fit
        width, fix = '', 'adapt fewer blocks'
    note(
        f'{where}{width} is {share:.3%} of the backbone, above {DEFAULT_BUDGET:.0%}; kept ({fix})',
        logging.WARNING,
    )
    return adapter_set


def fit_budget(
    build: Build,
    adapter: dict,
    adapter_cls: type,
    set_name: str,
    budget: float,
    backbone_size: int,
    note: Note,
    strict: bool = True,
) -> AdapterSet:
    """The widest set ``set_name`` whose adapters have at most ``budget`` x ``backbone_size``
    parameters (``adapter_cls.width_arg`` taken from :data:`BUDGET_WIDTHS`), noted.

    Raises:
        ValueError: for a class without ``width_arg``, a ``budget`` outside (0, 1), or,
            if ``strict``, where even the narrowest width exceeds the budget (else the
            narrowest is built, with a warning note).
    """
    arg = adapter_cls.width_arg
    if arg is None:
        raise ValueError(
            f'MSLoRABackbone: budget={budget} needs an adapter width to '
            f'scale, but {adapter_cls.__name__}.width_arg is None; set its '
            f'width in the adapter config instead.'
        )
    if not 0 < budget < 1:
        raise ValueError(
            f'MSLoRABackbone: budget must be a share of the backbone in '
            f'(0, 1), e.g. 0.05; got {budget!r}.'
        )
    limit = budget * backbone_size
    where = f'{adapter_cls.__name__} (set {set_name!r})'

    def trial(index: int) -> Tuple[AdapterSet, int]:
        built = build(dict(copy.deepcopy(adapter), **{arg: BUDGET_WIDTHS[index]}))
        return built, numel(built.modules)

    narrowest = trial(len(BUDGET_WIDTHS) - 1)
    if narrowest[1] > limit:
        problem = (
            f'even {arg}={BUDGET_WIDTHS[-1]} gives {where} {narrowest[1]:,d} '
            f'parameters, more than {budget:.2%} of the backbone ({int(limit):,d})'
        )
        if strict:
            raise ValueError(
                f'MSLoRABackbone: {problem}; raise the budget, or adapt '
                f'fewer blocks (blocks=dict(pattern=..., layout=...)).'
            )
        note(
            f'{problem}; built at {arg}={BUDGET_WIDTHS[-1]} (adapt fewer blocks '
            f'with blocks=dict(pattern=..., layout=...) to stay within it)',
            logging.WARNING,
        )
        return narrowest[0]
    index, (adapter_set, size) = _widest_within(trial, limit, narrowest)
    note(
        f'budget {budget:.2%} of the backbone: {arg}={BUDGET_WIDTHS[index]} for '
        f'{adapter_cls.__name__} (set {set_name!r}, {size / backbone_size:.3%})'
    )
    return adapter_set


def _widest_within(
    trial: Callable[[int], Tuple[AdapterSet, int]], limit: float, narrowest: Tuple[AdapterSet, int]
) -> Tuple[int, Tuple[AdapterSet, int]]:
    """Bisect :data:`BUDGET_WIDTHS` (the size grows with the width) for the widest
    width whose set has at most ``limit`` parameters, building a few sets instead of
    all of them; ``narrowest`` is the trial of the last width, which fits."""
    low, high = 0, len(BUDGET_WIDTHS) - 1
    fitting = narrowest
    while low < high:
        middle = (low + high) // 2
        candidate = trial(middle)
        if candidate[1] <= limit:
            high, fitting = middle, candidate
        else:
            low = middle + 1
    return high, fitting
