"""``MSLoRABackbone``: a frozen backbone with one MSLoRA adapter after each block.

The same wrapper carries the peer methods (:mod:`mmslora.models.peers`): adapters
placed after blocks (``placement = 'block'``: MSLoRA, bottleneck adapters, Mona),
adapters on the backbone's own layers (``placement = 'layer'``: LoRA), no adapter at
all (linear probe, BitFit) and full fine-tuning (``freeze=False``).
"""
import copy
import functools
import re
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.model import BaseModule

from mmslora.registry import MODELS
from .block_presets import find_blocks, infer_channels, iter_norms
from .layouts import apply_in_layout

TRAINABLE_OPTIONS = ('norm', 'bias')
PLACEMENTS = ('block', 'layer')
DEFAULT_ADAPTER = dict(type='mmslora.MSLoRAAdapter')
# the layer types a 'layer' adapter is offered when it does not name its own
DEFAULT_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _adapter_key(block_name: str) -> str:
    return block_name.replace('.', '_')


@MODELS.register_module()
class MSLoRABackbone(BaseModule):
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

    Peers (:mod:`mmslora.models.peers`, presets in ``peers.METHODS``) use the same
    wrapper: another block adapter (``BottleneckAdapter``, ``MonaAdapter``), a layer
    adapter (``LoRA``, hooked on the backbone's own Linear/Conv2d layers, adapters
    under ``adapters.<layer name with '.' as '_'>``), ``adapter=None`` (linear probe,
    BitFit) or ``freeze=False`` (full fine-tuning).

    Args:
        backbone (dict): config of the backbone to wrap, e.g.
            ``dict(type='mmdet.ResNet', depth=50)``.
        adapter (dict, optional): config of the adapter. Its class's ``placement``
            attribute says where it goes (``'block'`` when absent):

            * ``'block'``: one adapter after each block, built with ``channels``
              inferred per block; ``forward(F)`` returns ``F + H(F)``.
            * ``'layer'``: one adapter on each targeted ``nn.Linear`` / ``nn.Conv2d``
              of the backbone, built by ``cls.from_layer(layer, **cfg)``; the hook
              returns ``layer(x) + adapter(x)``. ``targets`` in the config (a regex,
              or a list of them, matched in full against ``named_modules()`` names)
              picks the layers; default: every layer of ``cls.layer_types`` (Linear
              and Conv2d). Layers the class declines (``cls.skip_reason(layer)``, e.g.
              LoRA on grouped/depthwise convolutions) and the projections of
              ``torch.nn.MultiheadAttention`` (used functionally, so a hook on them
              never fires) are listed in ``skipped_layers`` with the reason.

            ``None``: no adapter (with ``trainable=('bias',)`` that is BitFit; with
            nothing trainable only the modules outside the backbone train, a linear
            probe). Default ``dict(type='mmslora.MSLoRAAdapter')``.
        blocks (dict | list[dict], optional): which modules are blocks. None uses the
            presets (ResNet BasicBlock/Bottleneck, Swin and ViT blocks of mmdet, mmseg and
            mmpretrain). Otherwise ``dict(pattern=<regex over named_modules() names>,
            layout='nchw' | 'nlc' | 'tokens', channels=<optional int>)`` or a list of them.
        grid_from (str): name of the backbone module whose output gives the patch grid,
            for the ``'tokens'`` layout (ViTs). Default ``'patch_embed'``.
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
        init_cfg (dict, optional): MMEngine init config of the wrapper.
    """

    def __init__(self, backbone: dict, adapter: Optional[dict] = DEFAULT_ADAPTER,
                 blocks=None, grid_from: str = 'patch_embed',
                 trainable: Sequence[str] = (), freeze: bool = True,
                 norm_eval: Optional[bool] = None,
                 pretrained: Union[str, dict, None] = None, init_cfg=None) -> None:
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
        if adapter is not None and not (isinstance(adapter, dict) and 'type' in adapter):
            raise TypeError(
                "MSLoRABackbone: `adapter` must be None or a config dict with a 'type', e.g. "
                f"dict(type='mmslora.MSLoRAAdapter'); got {adapter!r}.")
        backbone = copy.deepcopy(backbone)
        if pretrained is not None:
            backbone['init_cfg'] = dict(
                type='Pretrained',
                **(pretrained if isinstance(pretrained, dict) else dict(checkpoint=pretrained)))
        self.backbone = _build_backbone(backbone)
        self.adapter_cfg = copy.deepcopy(adapter) if adapter is not None else None
        self.trainable = tuple(trainable)
        self.freeze = freeze
        self.norm_eval = freeze if norm_eval is None else norm_eval
        self.grid_from = grid_from

        self.block_layouts: Dict[str, str] = {}
        self.layer_names: List[str] = []
        self.skipped_layers: Dict[str, str] = {}
        self.adapters = nn.ModuleDict()
        modules = dict(self.backbone.named_modules())
        self.placement = None
        if self.adapter_cfg is not None:
            adapter_cls = _adapter_class(self.adapter_cfg)
            self.placement = getattr(adapter_cls, 'placement', 'block')
            if self.placement not in PLACEMENTS:
                raise ValueError(f'MSLoRABackbone: {adapter_cls.__name__}.placement is '
                                 f'{self.placement!r}; it must be one of {PLACEMENTS}.')
            if self.placement == 'block':
                self._build_block_adapters(modules, blocks)
            else:
                if blocks is not None:
                    raise ValueError(
                        f'MSLoRABackbone: `blocks` selects blocks for block adapters, but '
                        f'{adapter_cls.__name__} goes on layers; select its layers with '
                        f'`targets` in the adapter config instead.')
                self._build_layer_adapters(adapter_cls)
        self._grid = None
        self._hooks = []
        self._register_hooks(modules)
        self.freeze_backbone()

    def _build_block_adapters(self, modules: Dict[str, nn.Module], blocks) -> None:
        for name, (layout, channels) in find_blocks(self.backbone, blocks).items():
            channels = channels or infer_channels(modules[name])
            self.adapters[_adapter_key(name)] = MODELS.build(
                dict(self.adapter_cfg, channels=channels))
            self.block_layouts[name] = layout

    def _build_layer_adapters(self, adapter_cls) -> None:
        cfg = {k: v for k, v in self.adapter_cfg.items() if k not in ('type', 'targets')}
        targets = self.adapter_cfg.get('targets')
        patterns = [targets] if isinstance(targets, str) else list(targets or [])
        layer_types = tuple(getattr(adapter_cls, 'layer_types', DEFAULT_LAYER_TYPES))
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
                skip_reason = getattr(adapter_cls, 'skip_reason', None)
                reason = skip_reason(module) if skip_reason else None
            if reason:
                self.skipped_layers[name] = reason
                continue
            key = _adapter_key(name)
            if key in self.adapters:
                raise ValueError(f'MSLoRABackbone: two layers map to the adapter key {key!r}.')
            self.adapters[key] = adapter_cls.from_layer(module, **cfg)
            self.layer_names.append(name)
        if not self.layer_names:
            tried = f'targets {patterns}' if patterns else 'the default targets'
            raise ValueError(
                f'MSLoRABackbone: {adapter_cls.__name__} found no layer of '
                f'{type(self.backbone).__name__} to adapt ({tried}, layer types '
                f'{[t.__name__ for t in layer_types]}; skipped: '
                f'{dict(list(self.skipped_layers.items())[:5])}). Candidate layers: '
                f'{candidates[:8]}.')

    # ----------------------------------------------------------------- hooks
    def _register_hooks(self, modules: Dict[str, nn.Module]) -> None:
        if 'tokens' in self.block_layouts.values():
            if self.grid_from not in modules:
                raise ValueError(
                    f"MSLoRABackbone: layout 'tokens' needs the patch grid, but the backbone "
                    f"has no module {self.grid_from!r}; set grid_from to the patch "
                    f'embedding (e.g. one of {[n for n in modules if "embed" in n][:5]}).')
            self._hooks.append(modules[self.grid_from].register_forward_hook(self._grid_hook))
        # bound methods in partials (not closures), so copy.deepcopy of the wrapper
        # (EMA models, mean teachers) hooks the copy's own adapters
        for name, layout in self.block_layouts.items():
            hook = functools.partial(self._block_hook, _adapter_key(name), layout)
            self._hooks.append(modules[name].register_forward_hook(hook, with_kwargs=True))
        for name in self.layer_names:
            hook = functools.partial(self._layer_hook, _adapter_key(name))
            self._hooks.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def _grid_hook(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) > 1:
            self._grid = tuple(output[1])  # (tokens, (H, W)) from mm* PatchEmbed
        else:
            self._grid = tuple(output.shape[-2:])  # a (B, C, H, W) map

    def _block_hook(self, key: str, layout: str, module, args, kwargs, output):
        adapter = self.adapters[key]
        if isinstance(output, (tuple, list)):
            first = apply_in_layout(adapter, output[0], layout, args, kwargs, self._grid)
            return type(output)([first, *output[1:]])
        return apply_in_layout(adapter, output, layout, args, kwargs, self._grid)

    def _layer_hook(self, key: str, module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        return output + self.adapters[key](x)

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
        """Run the backbone's own ``init_weights`` (pretrained ``init_cfg``), then
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

    # ------------------------------------------------------------- report
    def print_trainable_parameters(self):
        """Print peft's ``trainable params: ... || all params: ... || trainable%`` line."""
        from mmslora.utils.params import print_trainable_parameters
        return print_trainable_parameters(self)

    # ------------------------------------------------------------- forward
    def forward(self, *args, **kwargs):
        self._grid = None
        return self.backbone(*args, **kwargs)


def _adapter_class(cfg: dict) -> type:
    """The class an adapter config builds (for its ``placement``)."""
    adapter_type = cfg['type']
    if isinstance(adapter_type, type):
        return adapter_type
    cls = MODELS.get(adapter_type)
    if cls is None:
        raise KeyError(f'MSLoRABackbone: adapter type {adapter_type!r} is not registered; '
                       f"write it fully scoped, e.g. 'mmslora.MSLoRAAdapter' or 'mmslora.LoRA'.")
    return cls


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
