"""``MSLoRABackbone``: a frozen backbone with one MSLoRA adapter after each block.

The same wrapper carries the peer methods (:mod:`mmslora.models.peers`): block
adapters (:class:`~mmslora.models.base.BlockAdapter`: MSLoRA, bottleneck adapters,
Mona), layer adapters (:class:`~mmslora.models.base.LayerAdapter`: LoRA), no adapter at
all (linear probe, BitFit) and full fine-tuning (``freeze=False``); and several named
adapter sets on one frozen backbone (:meth:`MSLoRABackbone.add_adapter`).
"""
import contextlib
import copy
import functools
import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor
from mmengine.logging import print_log
# MMEngine's ModuleDict: init_weights reaches the adapters (torch's has none)
from mmengine.model import ModuleDict

from mmslora.compat.mmcv import python_drop_probs
from mmslora.registry import MODELS
from .base import AdapterHost, BlockAdapter, LayerAdapter
from . import merging
from .block_presets import find_blocks, iter_norms
from .discovery import infer_channels
from .frozen_path import FastPathReport, disable_frozen_fast_path, enable_frozen_fast_path
from .layouts import apply_in_layout, parse_layout
from .params import ParameterReport, print_trainable_parameters

TRAINABLE_OPTIONS = ('norm', 'bias')
DEFAULT_ADAPTER = dict(type='mmslora.MSLoRAAdapter')
#: the set built from the constructor's ``adapter``; its adapters are ``adapters.*``
DEFAULT_SET = 'default'
#: adapter widths tried, widest first, to meet a parameter ``budget``
BUDGET_WIDTHS = (1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 2, 1)
#: the share of the backbone that adapters built without a width stay within
DEFAULT_BUDGET = 0.05
#: the module whose output gives the patch grid of ``'tokens'`` blocks, by default
DEFAULT_GRID_FROM = 'patch_embed'


def with_default_width(adapter: dict) -> dict:
    """A copy of the adapter config ``adapter`` with its width (the class's
    ``width_arg``: ``hidden_dim``, LoRA's ``rank``) set to the class default where the
    config gives none; unchanged for a class without a width or without a default."""
    adapter = copy.deepcopy(adapter)
    adapter_cls = _adapter_class(adapter)
    arg = adapter_cls.width_arg
    if arg is not None and arg not in adapter:
        param = inspect.signature(adapter_cls.__init__).parameters.get(arg)
        if param is not None and param.default is not inspect.Parameter.empty:
            adapter[arg] = param.default
    return adapter


def adapter_key(module_name: str) -> str:
    """The key of the adapter of backbone module ``module_name`` in its set's
    ``ModuleDict`` (``'layer1.0'`` -> ``'layer1_0'``)."""
    return module_name.replace('.', '_')


@dataclass
class AdapterSet:
    """One named set of adapters on the wrapped backbone.

    Attributes:
        name (str): the set's name (``'default'`` for the constructor's adapter).
        cfg (dict | None): the adapter config it was built from.
        modules (nn.ModuleDict): the adapters, keyed by :func:`adapter_key`.
        blocks (dict[str, str]): block name -> layout, for block adapters.
        layers (list[str]): the adapted layers, for layer adapters.
        skipped_layers (dict[str, str]): layers a layer adapter declined, with why.
    """
    name: str
    cfg: Optional[dict]
    modules: nn.ModuleDict
    blocks: Dict[str, str] = field(default_factory=dict)
    layers: List[str] = field(default_factory=list)
    skipped_layers: Dict[str, str] = field(default_factory=dict)

    @property
    def placement(self) -> Optional[str]:
        """``'block'``, ``'layer'``, or None for a set without adapters."""
        return 'block' if self.blocks else 'layer' if self.layers else None


@MODELS.register_module()
class MSLoRABackbone(AdapterHost):
    """Wrap any backbone, freeze it, and reweight each block's output with an adapter.

    For every matched block with output ``F`` the wrapper returns
    ``F + H(F)`` in place of ``F``, ``H`` being the adapter (``MSLoRAAdapter`` by default:
    ``H(F) = Proj(F) * Trans(F)``). Adapters are attached by forward hooks, so the
    wrapped module is the upstream backbone, unchanged, at ``self.backbone``: the keys
    ``backbone.*`` of this module's state dict are exactly the upstream backbone's keys
    (pretrained checkpoints and ``init_cfg`` load as they are), and adapters live under
    ``adapters.<block name with '.' as '_'>``. The forward returns exactly what the
    wrapped backbone returns, so necks and heads are unaffected.

    Frozen state: every backbone parameter has ``requires_grad=False`` from construction
    on (MMEngine wraps the model in DDP before ``init_weights``), and again after
    ``init_weights``. Norm layers with running statistics inside the backbone stay in
    eval mode whatever ``train()`` is called with (``norm_eval=True``), so BN statistics
    never drift. Dropout and drop-path of the backbone follow ``train()`` as usual.
    ``freeze=False`` (full fine-tuning) turns all of this off.

    Frozen fast path (``fast_path=True``, the default for a frozen backbone;
    :mod:`mmslora.models.frozen_path`): frozen ``Conv2d`` layers pass gradients back
    without keeping their inputs, eval-mode BNs are folded into the convolution before
    them, ReLUs keep bool masks. Same function up to float rounding (folding reorders
    products); less training memory (on R-50 0.50x instead of 0.76x of full
    fine-tuning with MSLoRA), about the same time on CPU; where a parameter
    trains (``trainable``, full fine-tuning) that layer runs its own forward. The state
    dict is the upstream one; ``fast_path_report`` lists what runs the fast path.

    Switching: ``with wrapper.disable_adapters():`` runs the plain frozen backbone;
    :meth:`remove_adapters` detaches the hooks for good. Named sets (the way peft
    serves several tasks from one base model): :meth:`add_adapter` builds another set
    on the same frozen backbone (its adapters under ``adapter_sets.<name>.*``),
    :meth:`set_adapter` picks the one that runs and trains, :meth:`adapters_of` gives a
    set's modules; ``mmslora.models.save_adapter(model, dir, adapter_name=...)`` writes
    one set.

    Args:
        backbone (dict): config of the backbone to wrap, e.g.
            ``dict(type='mmdet.ResNet', depth=50)``.
        adapter (dict, optional): config of the adapter; its class says where it goes:

            * a :class:`~mmslora.models.base.BlockAdapter` (MSLoRA, Adapter, Mona):
              one adapter after each block, built with ``channels`` inferred per
              block; ``forward(F)`` returns ``F + H(F)``.
            * a :class:`~mmslora.models.base.LayerAdapter` (LoRA): one adapter on each
              targeted layer of ``cls.layer_types`` (Linear and Conv2d for LoRA),
              built by ``cls.from_layer(layer, **cfg)``; the hook returns
              ``layer(x) + adapter(x)``. ``targets`` in the config (a regex, or a list
              of them, matched in full against ``named_modules()`` names) picks the
              layers; default: every layer of ``cls.layer_types``. Layers the class
              declines (``cls.skip_reason(layer)``, e.g. LoRA on grouped/depthwise
              convolutions) and the projections of ``torch.nn.MultiheadAttention``
              (used functionally, so a hook on them never fires) are listed in
              ``skipped_layers`` with the reason.

            ``None``: no adapter (with ``trainable=('bias',)`` that is BitFit; with
            nothing trainable only the modules outside the backbone train, a linear
            probe). Default ``dict(type='mmslora.MSLoRAAdapter')``.
        blocks (str | dict | list[dict], optional): which modules are blocks. None uses
            the presets (ResNet BasicBlock/Bottleneck, Swin and ViT blocks of mmdet, mmseg
            and mmpretrain, EfficientNet-Lite) and, for any other backbone, the blocks
            found in its module tree by one dry forward at construction
            (:mod:`mmslora.models.discovery`; ``'auto'`` forces that). Otherwise
            ``dict(pattern=<regex over named_modules() names>, layout='nchw' | 'nhwc' |
            'nlc' | 'tokens', channels=<optional int>)`` or a list of them.
        grid_from (str): name of the backbone module whose output gives the patch grid,
            for the ``'tokens'`` layout (ViTs). Default ``'patch_embed'``. Another name
            must name a module of the backbone (``ValueError`` otherwise), and one that
            no adapted block reads (no ``'tokens'`` block) is reported as unused.
        trainable (Sequence[str]): backbone parameters to train besides the adapters:
            ``'norm'`` (affine parameters of norm layers), ``'bias'`` (every bias, as in
            BitFit). Default () - the backbone is fully frozen.
        freeze (bool): freeze the backbone (default True). False is full fine-tuning:
            no parameter of the backbone is frozen by the wrapper (the backbone's own
            ``frozen_stages`` still applies), ``trainable`` must be empty, and norms
            follow ``train()`` unless ``norm_eval=True``.
        norm_eval (bool, optional): keep norm layers with running statistics in eval
            mode. Default None: True when ``freeze`` is True, else False.
        pretrained (str | dict, optional): checkpoint for the wrapped backbone; mmseg's
            ``EncoderDecoder`` passes its ``pretrained`` here. Sets the backbone's
            ``init_cfg`` to ``dict(type='Pretrained', checkpoint=pretrained)``, or to
            ``dict(type='Pretrained', **pretrained)`` for a dict such as
            ``dict(checkpoint=url, prefix='backbone.')`` (a classifier's checkpoint).
        budget (float, optional): the adapters' parameters as a share of the
            backbone's at most, e.g. 0.05: the adapter's width (``hidden_dim``, LoRA's
            ``rank``: its class's ``width_arg``) becomes the largest of
            :data:`BUDGET_WIDTHS` that meets it, reported in ``notes`` and the parameter
            report. Default None: a width the adapter config gives is kept (with a
            warning, and a note, where the adapters exceed :data:`DEFAULT_BUDGET` of
            the backbone); without one, the class default width where the adapters
            stay within :data:`DEFAULT_BUDGET`, else the widest of
            :data:`BUDGET_WIDTHS` that does (logged and noted). Either way the set's
            config (``adapter_cfg``, adapter files) records the width built.
        fast_path (bool): the frozen fast path (above) when ``freeze`` is True. Default
            True; False runs the backbone's layers as upstream wrote them (bitwise).
        init_cfg (dict, optional): MMEngine init config of the wrapper.
    """

    def __init__(self, backbone: dict, adapter: Optional[dict] = DEFAULT_ADAPTER,
                 blocks=None, grid_from: str = DEFAULT_GRID_FROM,
                 trainable: Sequence[str] = (), freeze: bool = True,
                 norm_eval: Optional[bool] = None,
                 pretrained: Union[str, dict, None] = None, budget: Optional[float] = None,
                 fast_path: bool = True, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise TypeError(
                "MSLoRABackbone: `backbone` must be a config dict with a 'type', e.g. "
                f"dict(type='mmdet.ResNet', depth=50); got {backbone!r}.")
        unknown = set(trainable) - set(TRAINABLE_OPTIONS)
        if unknown:
            raise ValueError(f'MSLoRABackbone: unknown trainable options {sorted(unknown)}; '
                             f'choose from {TRAINABLE_OPTIONS}.')
        if not freeze and trainable:
            raise ValueError(
                f'MSLoRABackbone: trainable={tuple(trainable)!r} has no meaning with '
                f'freeze=False (every backbone parameter trains); drop one of them.')
        backbone = copy.deepcopy(backbone)
        if pretrained is not None:
            backbone['init_cfg'] = dict(
                type='Pretrained',
                **(pretrained if isinstance(pretrained, dict) else dict(checkpoint=pretrained)))
        self.backbone = _build_backbone(backbone)
        python_drop_probs(self.backbone)  # NumPy drop-path rates break torch.compile's graph
        self.trainable = tuple(trainable)
        self.freeze = freeze
        self.norm_eval = freeze if norm_eval is None else norm_eval
        self.grid_from = _check_grid_from(self.backbone, grid_from)

        self.adapters = ModuleDict()  # the default set: state-dict keys adapters.*
        self.adapter_sets = ModuleDict()  # the other named sets
        self._sets: Dict[str, AdapterSet] = {}
        self._hooks: Dict[str, list] = {}
        self._grid = None
        self._input_hw = None
        self._active = DEFAULT_SET
        self._enabled = True
        self.notes: List[str] = []  # how a budget was met, for the parameter report
        self._add_set(DEFAULT_SET, adapter, blocks, budget)
        if grid_from != DEFAULT_GRID_FROM and ('tokens', None) not in {
                parse_layout(layout) for layout in self.block_layouts.values()}:
            print_log(f'MSLoRABackbone: grid_from={grid_from!r} is not used: no adapted '
                      f"block has the layout 'tokens' (layouts: "
                      f'{sorted(set(self.block_layouts.values()))}); drop grid_from.',
                      logger='current', level=logging.WARNING)
        self.freeze_backbone()
        self.fast_path_report: Optional[FastPathReport] = None
        self.set_fast_path(fast_path and freeze)

    # ------------------------------------------------------- adapter sets
    @property
    def adapter_names(self) -> List[str]:
        """The names of the adapter sets, ``'default'`` first."""
        return list(self._sets)

    @property
    def active_adapter(self) -> str:
        """The set that runs in ``forward`` and trains."""
        return self._active

    def adapter_set(self, name: Optional[str] = None) -> AdapterSet:
        """The :class:`AdapterSet` called ``name`` (default: the active one)."""
        name = self._active if name is None else name
        if name not in self._sets:
            raise KeyError(f'MSLoRABackbone: no adapter set {name!r}; the sets are '
                           f'{self.adapter_names}.')
        return self._sets[name]

    def adapters_of(self, name: Optional[str] = None) -> nn.ModuleDict:
        """The adapters of set ``name`` (default: the active one), by adapter key."""
        return self.adapter_set(name).modules

    def adapter_modules(self) -> nn.Module:
        return nn.ModuleList([self.adapters, self.adapter_sets])

    def add_adapter(self, name: str, adapter: dict, blocks=None,
                    budget: Optional[float] = None) -> AdapterSet:
        """Build another adapter set on the same frozen backbone.

        ``adapter``, ``blocks`` and ``budget`` as in the constructor. The new set's adapters are
        under ``adapter_sets.<name>.*`` in the state dict; they start at their zero
        start and stay frozen and inactive until :meth:`set_adapter` picks them.
        """
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f'MSLoRABackbone: adapter set name {name!r} must be a Python '
                             f"identifier, e.g. 'coco' or 'task_b'.")
        if name in self._sets:
            raise ValueError(f'MSLoRABackbone: an adapter set {name!r} exists already; '
                             f'delete_adapter({name!r}) first or choose another name.')
        if adapter is None:
            raise ValueError('MSLoRABackbone.add_adapter: give an adapter config, e.g. '
                             "dict(type='mmslora.MSLoRAAdapter').")
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
            raise ValueError('MSLoRABackbone: the default adapter set cannot be deleted; '
                             'build the wrapper with adapter=None for none.')
        self.adapter_set(name)
        if merging.merged_set(self) == name:
            merging.check_unmerged(self, f'delete_adapter({name!r})')
        for handle in self._hooks.pop(name, []):
            handle.remove()
        del self._sets[name]
        del self.adapter_sets[name]
        if self._active == name:
            self.set_adapter(DEFAULT_SET)

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator['MSLoRABackbone']:
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
        for handles in self._hooks.values():
            for handle in handles:
                handle.remove()
        self._hooks.clear()

    # ---------------------------------------------------- building a set
    def _add_set(self, name: str, adapter: Optional[dict], blocks,
                 budget: Optional[float] = None) -> AdapterSet:
        if adapter is not None and not (isinstance(adapter, dict) and 'type' in adapter):
            raise TypeError(
                "MSLoRABackbone: `adapter` must be None or a config dict with a 'type', e.g. "
                f"dict(type='mmslora.MSLoRAAdapter'); got {adapter!r}.")
        modules_by_name = dict(self.backbone.named_modules())
        if adapter is None:
            adapter_set = AdapterSet(name, None, ModuleDict())
        else:
            adapter_cls = _adapter_class(adapter)
            if issubclass(adapter_cls, BlockAdapter):
                found = find_blocks(self.backbone, blocks, self.grid_from)
                build = functools.partial(self._build_block_adapters, found=found,
                                          modules=modules_by_name)
            else:
                if blocks is not None:
                    raise ValueError(
                        f'MSLoRABackbone: `blocks` selects blocks for block adapters, but '
                        f'{adapter_cls.__name__} is a LayerAdapter; select its layers with '
                        f'`targets` in the adapter config instead.')
                build = functools.partial(self._build_layer_adapters, adapter_cls=adapter_cls)
            if budget is None:
                adapter_set = self._build_within_default_budget(name, adapter, adapter_cls,
                                                                build)
            else:
                adapter_set = self._fit_budget(name, adapter, adapter_cls, budget, build)
        self._hooks[name] = self._register_hooks(adapter_set, modules_by_name)
        # attached only once built: a set that fails to build leaves nothing behind
        if name == DEFAULT_SET:
            self.adapters = adapter_set.modules
        else:
            self.adapter_sets[name] = adapter_set.modules
        self._sets[name] = adapter_set
        adjusted = sorted({m.adjustment for m in adapter_set.modules.values() if m.adjustment})
        if adjusted:  # once per set, not once per adapter
            print_log(f'MSLoRABackbone: adapter set {name!r}: {"; ".join(adjusted)}; give '
                      f'fitting values (or strict_groups=True to refuse them).',
                      logger='current', level=logging.WARNING)
        return adapter_set

    def _note(self, note: str, level: int = logging.INFO) -> None:
        """Log ``note`` and keep it for the parameter report."""
        self.notes.append(note)
        print_log(f'MSLoRABackbone: {note}', logger='current', level=level)

    def _share(self, adapter_set: AdapterSet) -> float:
        return (sum(p.numel() for p in adapter_set.modules.parameters()) /
                max(sum(p.numel() for p in self.backbone.parameters()), 1))

    def _build_within_default_budget(self, name: str, adapter: dict, adapter_cls,
                                     build) -> AdapterSet:
        """The set at the width the config gives (kept, with a warning above
        :data:`DEFAULT_BUDGET`), or without one at the class default, fitted to
        :data:`DEFAULT_BUDGET` where the default exceeds it."""
        arg = adapter_cls.width_arg
        cfg = with_default_width(adapter)
        adapter_set = build(AdapterSet(name, cfg, ModuleDict()))
        share = self._share(adapter_set)
        if share <= DEFAULT_BUDGET:
            return adapter_set
        where = f'{adapter_cls.__name__} (set {name!r})'
        if arg in cfg and arg not in adapter:  # the class default: fit it
            self._note(f'{where}: the default {arg}={cfg[arg]} would be {share:.3%} of the '
                       f'backbone; fitting the width to {DEFAULT_BUDGET:.0%} (give {arg} to '
                       f'choose it)')
            return self._fit_budget(name, adapter, adapter_cls, DEFAULT_BUDGET, build,
                                    strict=False)
        if arg in adapter:
            width = f' with {arg}={cfg[arg]} as given'
            fix = f'drop {arg} to fit the width, or set budget={DEFAULT_BUDGET}'
        else:  # no width to fit
            width, fix = '', 'adapt fewer blocks'
        self._note(f'{where}{width} is {share:.3%} of the backbone, above '
                   f'{DEFAULT_BUDGET:.0%}; kept ({fix})', logging.WARNING)
        return adapter_set

    def _fit_budget(self, name: str, adapter: dict, adapter_cls, budget: float,
                    build, strict: bool = True) -> AdapterSet:
        """The widest set whose adapters have at most ``budget`` x the backbone's
        parameters (``cls.width_arg`` taken from :data:`BUDGET_WIDTHS`). Where even the
        narrowest exceeds it: ``ValueError`` if ``strict``, else the narrowest, with a
        warning."""
        arg = adapter_cls.width_arg
        if arg is None:
            raise ValueError(f'MSLoRABackbone: budget={budget} needs an adapter width to '
                             f'scale, but {adapter_cls.__name__}.width_arg is None; set its '
                             f'width in the adapter config instead.')
        if not 0 < budget < 1:
            raise ValueError(f'MSLoRABackbone: budget must be a share of the backbone in '
                             f'(0, 1), e.g. 0.05; got {budget!r}.')
        limit = budget * sum(p.numel() for p in self.backbone.parameters())

        def trial(width: int) -> Tuple[AdapterSet, int]:
            cfg = dict(copy.deepcopy(adapter), **{arg: width})
            built = build(AdapterSet(name, cfg, ModuleDict()))
            return built, sum(p.numel() for p in built.modules.parameters())

        # the size grows with the width: bisect BUDGET_WIDTHS (widest first) for the
        # first width that fits, building a few sets instead of all of them
        low, high = 0, len(BUDGET_WIDTHS) - 1
        fitting = trial(BUDGET_WIDTHS[high])
        if fitting[1] > limit:
            problem = (f'even {arg}={BUDGET_WIDTHS[-1]} gives {adapter_cls.__name__} (set '
                       f'{name!r}) {fitting[1]:,d} parameters, more than {budget:.2%} of the '
                       f'backbone ({int(limit):,d})')
            if strict:
                raise ValueError(f'MSLoRABackbone: {problem}; raise the budget, or adapt '
                                 f'fewer blocks (blocks=dict(pattern=..., layout=...)).')
            self._note(f'{problem}; built at {arg}={BUDGET_WIDTHS[-1]} (adapt fewer blocks '
                       f'with blocks=dict(pattern=..., layout=...) to stay within it)',
                       logging.WARNING)
            return fitting[0]
        while low < high:
            middle = (low + high) // 2
            candidate = trial(BUDGET_WIDTHS[middle])
            if candidate[1] <= limit:
                high, fitting = middle, candidate
            else:
                low = middle + 1
        adapter_set, size = fitting
        share = size / (limit / budget)
        self._note(f'budget {budget:.2%} of the backbone: {arg}={BUDGET_WIDTHS[high]} '
                   f'for {adapter_cls.__name__} (set {name!r}, {share:.3%})')
        return adapter_set

    def _build_block_adapters(self, adapter_set: AdapterSet, found: dict,
                              modules: Dict[str, nn.Module]) -> AdapterSet:
        for name, (layout, channels) in found.items():
            channels = channels or infer_channels(modules[name])
            adapter_set.modules[adapter_key(name)] = MODELS.build(
                dict(adapter_set.cfg, channels=channels))
            adapter_set.blocks[name] = layout
        return adapter_set

    def _build_layer_adapters(self, adapter_set: AdapterSet, adapter_cls) -> AdapterSet:
        cfg = {k: v for k, v in adapter_set.cfg.items() if k not in ('type', 'targets')}
        targets = adapter_set.cfg.get('targets')
        patterns = [targets] if isinstance(targets, str) else list(targets or [])
        layer_types = tuple(adapter_cls.layer_types)
        functional = set()  # modules whose weights nn.MultiheadAttention uses directly
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                functional |= {f'{name}.{child}' if name else child
                               for child, _ in module.named_modules() if child}
        candidates = []
        for name, module in self.backbone.named_modules():
            if not name or not isinstance(module, layer_types):
                continue
            candidates.append(name)
            if patterns and not any(re.fullmatch(p, name) for p in patterns):
                continue
            if name in functional:
                reason = ('inside torch.nn.MultiheadAttention, which uses its weights '
                          'functionally: a forward hook on it never fires')
            else:
                reason = adapter_cls.skip_reason(module)
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
                f'{type(self.backbone).__name__} to adapt ({tried}, layer types '
                f'{[t.__name__ for t in layer_types]}; skipped: '
                f'{dict(list(adapter_set.skipped_layers.items())[:5])}). Candidate layers: '
                f'{candidates[:8]}.')
        return adapter_set

    # ----------------------------------------------------------------- hooks
    def _register_hooks(self, adapter_set: AdapterSet, modules: Dict[str, nn.Module]) -> list:
        handles = []
        if 'tokens' in adapter_set.blocks.values() and 'grid' not in self._hooks:
            if self.grid_from not in modules:
                raise ValueError(
                    f"MSLoRABackbone: layout 'tokens' needs the patch grid, but the backbone "
                    f"has no module {self.grid_from!r}; set grid_from to the patch "
                    f'embedding (e.g. one of {[n for n in modules if "embed" in n][:5]}).')
            self._hooks['grid'] = [
                modules[self.grid_from].register_forward_hook(self._grid_hook)]
        # bound methods in partials (not closures), so copy.deepcopy of the wrapper
        # (EMA models, mean teachers) hooks the copy's own adapters
        for name, layout in adapter_set.blocks.items():
            hook = functools.partial(self._block_hook, adapter_set.name, adapter_key(name),
                                     layout)
            handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))
        for name in adapter_set.layers:
            hook = functools.partial(self._layer_hook, adapter_set.name, adapter_key(name))
            handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))
        return handles

    def _grid_hook(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) > 1:
            self._grid = tuple(output[1])  # (tokens, (H, W)) from mm* PatchEmbed
        else:
            self._grid = tuple(output.shape[-2:])  # a (B, C, H, W) map

    def _runs(self, set_name: str) -> bool:
        return self._enabled and self._active == set_name

    def _block_hook(self, set_name: str, key: str, layout: str, module, args, kwargs, output):
        if not self._runs(set_name):
            return None
        adapter = self._sets[set_name].modules[key]
        if isinstance(output, (tuple, list)):
            first = apply_in_layout(adapter, output[0], layout, args, kwargs, self._grid,
                                    tuple(output[1:]), self._input_hw)
            return type(output)([first, *output[1:]])
        return apply_in_layout(adapter, output, layout, args, kwargs, self._grid,
                               input_hw=self._input_hw)

    def _layer_hook(self, set_name: str, key: str, module, args, kwargs, output):
        adapter = self._sets[set_name].modules[key]
        if not self._runs(set_name) or adapter.merged:  # merged: inside the weight
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        return output + adapter(x)

    # ------------------------------------------- the default set's records
    @property
    def adapter_cfg(self) -> Optional[dict]:
        """The adapter config of the default set."""
        return self._sets[DEFAULT_SET].cfg

    @property
    def placement(self) -> Optional[str]:
        """``'block'`` or ``'layer'`` for the default set's adapters, None without."""
        return self._sets[DEFAULT_SET].placement

    @property
    def block_layouts(self) -> Dict[str, str]:
        """Block name -> layout of the default set's block adapters."""
        return self._sets[DEFAULT_SET].blocks

    @property
    def layer_names(self) -> List[str]:
        """The layers of the default set's layer adapters."""
        return self._sets[DEFAULT_SET].layers

    @property
    def skipped_layers(self) -> Dict[str, str]:
        """Layers the default set's layer adapter declined, with the reason."""
        return self._sets[DEFAULT_SET].skipped_layers

    # --------------------------------------------------------- frozen state
    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter except those named by ``trainable``
        (nothing is frozen with ``freeze=False``)."""
        if not self.freeze:
            return
        self.backbone.requires_grad_(False)
        if 'norm' in self.trainable:
            for norm in iter_norms(self.backbone):
                norm.requires_grad_(True)
        if 'bias' in self.trainable:
            for name, param in self.backbone.named_parameters():
                if name.endswith('bias'):
                    param.requires_grad_(True)

    def init_weights(self) -> None:
        """Run the backbone's own ``init_weights`` (pretrained ``init_cfg``) and the
        adapters' (their ``init_cfg``, after which they keep their zero start), then
        re-assert the frozen state, which some backbones change there."""
        super().init_weights()
        self.freeze_backbone()

    def train(self, mode: bool = True) -> 'MSLoRABackbone':
        super().train(mode)
        if self.norm_eval:
            for m in self.backbone.modules():
                if hasattr(m, 'running_mean'):
                    m.eval()
        return self

    def set_fast_path(self, enabled: bool) -> None:
        """Turn the frozen fast path on (layers found and BN folds checked by dry
        forwards of the plain backbone) or off (every layer's own forward)."""
        if not enabled:
            disable_frozen_fast_path(self.backbone)
            self.fast_path_report = None
            return
        if not self.freeze:
            raise ValueError('MSLoRABackbone: the frozen fast path needs a frozen backbone; '
                             'it has no effect with freeze=False (full fine-tuning).')
        with self.disable_adapters():
            self.fast_path_report = enable_frozen_fast_path(self.backbone)
        print_log(f'MSLoRABackbone: {self.fast_path_report.summary()}', logger='current',
                  level=logging.DEBUG)

    # ------------------------------------------------------------- report
    def print_trainable_parameters(self) -> ParameterReport:
        """Print peft's ``trainable params: ... || all params: ... || trainable%`` line."""
        return print_trainable_parameters(self)

    # ------------------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        self._grid = None
        inputs = args[0] if args else next(iter(kwargs.values()), None)
        self._input_hw = tuple(inputs.shape[-2:]) if isinstance(inputs, Tensor) else None
        return self.backbone(*args, **kwargs)

    # ------------------------------------------------------------- merging
    @property
    def merged_adapter(self) -> Optional[str]:
        """The set merged into the backbone's weights (:meth:`merge_adapters`), or None."""
        return merging.merged_set(self)

    def merge_adapters(self, name: Optional[str] = None, safe: bool = True,
                       keep_original: bool = True) -> List[str]:
        """Merge the layer adapters of the active set into the layers' weights
        (``W + delta_weight()``), so the layers run at the plain backbone's cost; returns
        the merged layers. ``safe``: merge nothing if a merged weight would not be
        finite. ``keep_original``: keep a copy of the weights for a bitwise
        :meth:`unmerge_adapters`. Block adapters (MSLoRA, Mona, Adapter) stay modules:
        ``ValueError``. See :mod:`mmslora.models.merging`."""
        return merging.merge(self, name, safe=safe, keep_original=keep_original)

    def unmerge_adapters(self) -> List[str]:
        """Restore the weights :meth:`merge_adapters` changed (bitwise from the kept
        originals); returns the layers. ``RuntimeError`` when nothing is merged."""
        return merging.unmerge(self)


def _adapter_class(cfg: dict) -> type:
    """The class an adapter config builds; it must implement one of the adapter bases."""
    adapter_type = cfg['type']
    cls = adapter_type if isinstance(adapter_type, type) else MODELS.get(adapter_type)
    if cls is None:
        raise KeyError(f'MSLoRABackbone: adapter type {adapter_type!r} is not registered; '
                       f"write it fully scoped, e.g. 'mmslora.MSLoRAAdapter' or 'mmslora.LoRA'.")
    if not (isinstance(cls, type) and issubclass(cls, (BlockAdapter, LayerAdapter))):
        raise TypeError(
            f'MSLoRABackbone: adapter type {adapter_type!r} ({cls!r}) implements neither '
            f'mmslora.models.BlockAdapter (after blocks: forward(F) = F + residual(F)) nor '
            f'mmslora.models.LayerAdapter (beside layers: from_layer, forward(x) = update); '
            f'derive it from one of them (README, "Your own adapter").')
    return cls


def _check_grid_from(backbone: nn.Module, grid_from: str) -> str:
    """``grid_from`` if it names a module of ``backbone`` (or is the default, which
    only ``'tokens'`` blocks need); ``ValueError`` naming candidates otherwise."""
    names = [name for name, _ in backbone.named_modules() if name]
    if grid_from == DEFAULT_GRID_FROM or grid_from in names:
        return grid_from
    embeds = [name for name in names if 'embed' in name][:5]
    raise ValueError(
        f'MSLoRABackbone: grid_from={grid_from!r} names no module of '
        f'{type(backbone).__name__}; give the module whose output is the patch grid of '
        f"'tokens' blocks (candidates: {embeds or names[:5]}), or drop grid_from.")


def _build_backbone(cfg: dict) -> nn.Module:
    try:
        return MODELS.build(cfg)
    except KeyError as err:
        if 'is not in the' in str(err) and 'registry' in str(err):
            raise KeyError(
                f"MSLoRABackbone: backbone type {cfg['type']!r} is not registered where it was "
                f"looked up ({err}). Write it fully scoped, e.g. 'mmdet.ResNet', "
                f"'mmseg.VisionTransformer' or 'mmpretrain.SwinTransformer', or build inside "
                f"the toolbox's default scope (default_scope='mmdet' in the config).") from err
        raise
