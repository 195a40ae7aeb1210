"""``MSLoRABackbone``: a frozen backbone with one MSLoRA adapter after each block.

The same wrapper carries the peer methods (:mod:`mmslora.models.peers`): block
adapters (:class:`~mmslora.models.base.BlockAdapter`: MSLoRA, bottleneck adapters,
Mona), layer adapters (:class:`~mmslora.models.base.LayerAdapter`: LoRA), no adapter at
all (linear probe, BitFit) and full fine-tuning (``freeze=False``); and several named
adapter sets on one frozen backbone (:meth:`MSLoRABackbone.add_adapter`).

The pieces: :mod:`.adapter_set` (a set's modules and hooks), :mod:`.adapter_set_host`
(naming, building and switching the sets), :mod:`.block_presets`
(which modules are blocks), :mod:`.targeting` (which layers get layer adapters),
:mod:`.budget` (adapter widths within a parameter budget), :mod:`.token_grid` (the
patch grid of ``'tokens'`` blocks) and :mod:`.frozen_path` (the frozen fast path).
"""

import copy
import logging
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.logging import print_log

from mmslora.compat.mmcv import python_drop_probs
from mmslora.registry import MODELS
from . import merging
from .adapter_set import AdapterSet, adapter_key
from .adapter_set_host import DEFAULT_SET, AdapterSetHost
from .block_presets import iter_norms
from .budget import BUDGET_WIDTHS, DEFAULT_BUDGET, with_default_width
from .frozen_path import FastPathReport, disable_frozen_fast_path, enable_frozen_fast_path
from .layouts import parse_layout
from .params import ParameterReport, print_trainable_parameters

__all__ = [
    'MSLoRABackbone',
    'AdapterSet',
    'adapter_key',
    'with_default_width',
    'BUDGET_WIDTHS',
    'DEFAULT_BUDGET',
    'DEFAULT_SET',
    'DEFAULT_GRID_FROM',
]

TRAINABLE_OPTIONS = ('norm', 'bias')
DEFAULT_ADAPTER = dict(type='mmslora.MSLoRAAdapter')
#: the module whose output gives the patch grid of ``'tokens'`` blocks, by default
DEFAULT_GRID_FROM = 'patch_embed'


@MODELS.register_module()
class MSLoRABackbone(AdapterSetHost):
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
    products), less training memory; where a parameter trains (``trainable``, full
    fine-tuning) that layer runs its own forward. The state dict is the upstream one;
    ``fast_path_report`` lists what runs the fast path.

    Switching: ``with wrapper.disable_adapters():`` runs the plain frozen backbone;
    :meth:`remove_adapters` detaches the hooks for good. Named sets (several tasks on
    one frozen backbone): the constructor's adapter is the first set, ``'default'``
    (its adapters under ``adapters.*``); :meth:`add_adapter` builds another (under
    ``adapter_sets.<name>.*``), :meth:`set_adapter` picks the one that runs and trains,
    :meth:`adapter_set` gives a set (:class:`AdapterSet`: its ``modules``, ``blocks``,
    ``layers``), :attr:`adapter_names` their names;
    ``mmslora.models.save_adapter(model, dir, adapter_name=...)`` writes one set.

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

    def __init__(
        self,
        backbone: dict,
        adapter: Optional[dict] = DEFAULT_ADAPTER,
        blocks=None,
        grid_from: str = DEFAULT_GRID_FROM,
        trainable: Sequence[str] = (),
        freeze: bool = True,
        norm_eval: Optional[bool] = None,
        pretrained: Union[str, dict, None] = None,
        budget: Optional[float] = None,
        fast_path: bool = True,
        init_cfg=None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        _check_options(backbone, trainable, freeze)
        self.backbone = _build_backbone(backbone, pretrained)
        python_drop_probs(self.backbone)  # NumPy drop-path rates break torch.compile's graph
        self.trainable = tuple(trainable)
        self.freeze = freeze
        self.norm_eval = freeze if norm_eval is None else norm_eval
        self.grid_from = _check_grid_from(self.backbone, grid_from)
        self._init_sets()
        self._add_set(DEFAULT_SET, adapter, blocks, budget)
        if grid_from != DEFAULT_GRID_FROM and ('tokens', None) not in {
            parse_layout(layout) for layout in self.block_layouts.values()
        }:
            print_log(
                f'MSLoRABackbone: grid_from={grid_from!r} is not used: no adapted '
                f"block has the layout 'tokens' (layouts: "
                f'{sorted(set(self.block_layouts.values()))}); drop grid_from.',
                logger='current',
                level=logging.WARNING,
            )
        self.freeze_backbone()
        self.fast_path_report: Optional[FastPathReport] = None
        self.set_fast_path(fast_path and freeze)

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
        forwards of the plain backbone) or off (every layer's own forward).
        ``ValueError`` for ``enabled`` with ``freeze=False``."""
        if not enabled:
            disable_frozen_fast_path(self.backbone)
            self.fast_path_report = None
            return
        if not self.freeze:
            raise ValueError(
                'MSLoRABackbone: the frozen fast path needs a frozen backbone; '
                'it has no effect with freeze=False (full fine-tuning).'
            )
        with self.disable_adapters():
            self.fast_path_report = enable_frozen_fast_path(self.backbone)
        print_log(
            f'MSLoRABackbone: {self.fast_path_report.summary()}',
            logger='current',
            level=logging.DEBUG,
        )

    def print_trainable_parameters(self) -> ParameterReport:
        """Print peft's ``trainable params: ... || all params: ... || trainable%`` line."""
        return print_trainable_parameters(self)

    def forward(self, *args, **kwargs):
        """Exactly what the wrapped backbone's ``forward(*args, **kwargs)`` returns, with
        the active set's adapters applied by their hooks."""
        self._token_grid.start(args[0] if args else next(iter(kwargs.values()), None))
        return self.backbone(*args, **kwargs)

    # ------------------------------------------------------------- merging
    @property
    def merged_adapter(self) -> Optional[str]:
        """The set merged into the backbone's weights (:meth:`merge_adapters`), or None."""
        return merging.merged_set(self)

    def merge_adapters(
        self, name: Optional[str] = None, safe: bool = True, keep_original: bool = True
    ) -> List[str]:
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


def _check_options(backbone, trainable: Sequence[str], freeze: bool) -> None:
    """``TypeError`` / ``ValueError`` naming the fix for a backbone that is no config
    dict, unknown ``trainable`` options, or ``trainable`` with ``freeze=False``."""
    if not isinstance(backbone, dict) or 'type' not in backbone:
        raise TypeError(
            "MSLoRABackbone: `backbone` must be a config dict with a 'type', e.g. "
            f"dict(type='mmdet.ResNet', depth=50); got {backbone!r}."
        )
    unknown = set(trainable) - set(TRAINABLE_OPTIONS)
    if unknown:
        raise ValueError(
            f'MSLoRABackbone: unknown trainable options {sorted(unknown)}; '
            f'choose from {TRAINABLE_OPTIONS}.'
        )
    if not freeze and trainable:
        raise ValueError(
            f'MSLoRABackbone: trainable={tuple(trainable)!r} has no meaning with '
            f'freeze=False (every backbone parameter trains); drop one of them.'
        )


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
        f"'tokens' blocks (candidates: {embeds or names[:5]}), or drop grid_from."
    )


def _build_backbone(cfg: dict, pretrained: Union[str, dict, None]) -> nn.Module:
    """The backbone of ``cfg``, loading ``pretrained`` (a checkpoint, or a dict of
    ``Pretrained`` init arguments) through its ``init_cfg``; ``KeyError`` naming the
    fully scoped spelling for an unregistered type."""
    cfg = copy.deepcopy(cfg)
    if pretrained is not None:
        cfg['init_cfg'] = dict(
            type='Pretrained',
            **(pretrained if isinstance(pretrained, dict) else dict(checkpoint=pretrained)),
        )
    try:
        return MODELS.build(cfg)
    except KeyError as err:
        if 'is not in the' in str(err) and 'registry' in str(err):
            raise KeyError(
                f"MSLoRABackbone: backbone type {cfg['type']!r} is not registered where it was "
                f"looked up ({err}). Write it fully scoped, e.g. 'mmdet.ResNet', "
                f"'mmseg.VisionTransformer' or 'mmpretrain.SwinTransformer', or build inside "
                f"the toolbox's default scope (default_scope='mmdet' in the config)."
            ) from err
        raise
