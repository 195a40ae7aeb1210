"""``MSLoRABackbone``: a frozen backbone with one MSLoRA adapter after each block."""
import copy
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from mmslora.registry import MODELS
from .block_presets import find_blocks, infer_channels, iter_norms
from .layouts import apply_in_layout

TRAINABLE_OPTIONS = ('norm', 'bias')


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

    Args:
        backbone (dict): config of the backbone to wrap, e.g.
            ``dict(type='mmdet.ResNet', depth=50)``.
        adapter (dict): config of the adapter put after each block; ``channels`` is
            inferred per block. Default ``dict(type='mmslora.MSLoRAAdapter')``.
        blocks (dict | list[dict], optional): which modules are blocks. None uses the
            presets (ResNet BasicBlock/Bottleneck, Swin and ViT blocks of mmdet, mmseg and
            mmpretrain). Otherwise ``dict(pattern=<regex over named_modules() names>,
            layout='nchw' | 'nlc' | 'tokens', channels=<optional int>)`` or a list of them.
        grid_from (str): name of the backbone module whose output gives the patch grid,
            for the ``'tokens'`` layout (ViTs). Default ``'patch_embed'``.
        trainable (Sequence[str]): backbone parameters to train besides the adapters:
            ``'norm'`` (affine parameters of norm layers), ``'bias'`` (every bias, as in
            BitFit). Default () - the backbone is fully frozen.
        norm_eval (bool): keep norm layers with running statistics in eval mode.
            Default True.
        pretrained (str | dict, optional): checkpoint for the wrapped backbone; mmseg's
            ``EncoderDecoder`` passes its ``pretrained`` here. Sets the backbone's
            ``init_cfg`` to ``dict(type='Pretrained', checkpoint=pretrained)``, or to
            ``dict(type='Pretrained', **pretrained)`` for a dict such as
            ``dict(checkpoint=url, prefix='backbone.')`` (a classifier's checkpoint).
        init_cfg (dict, optional): MMEngine init config of the wrapper.
    """

    def __init__(self, backbone: dict, adapter: Optional[dict] = None,
                 blocks=None, grid_from: str = 'patch_embed',
                 trainable: Sequence[str] = (), norm_eval: bool = True,
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
        backbone = copy.deepcopy(backbone)
        if pretrained is not None:
            backbone['init_cfg'] = dict(
                type='Pretrained',
                **(pretrained if isinstance(pretrained, dict) else dict(checkpoint=pretrained)))
        self.backbone = _build_backbone(backbone)
        self.adapter_cfg = dict(adapter or dict(type='mmslora.MSLoRAAdapter'))
        self.trainable = tuple(trainable)
        self.norm_eval = norm_eval
        self.grid_from = grid_from

        self.block_layouts: Dict[str, str] = {}
        self.adapters = nn.ModuleDict()
        modules = dict(self.backbone.named_modules())
        for name, (layout, channels) in find_blocks(self.backbone, blocks).items():
            channels = channels or infer_channels(modules[name])
            self.adapters[_adapter_key(name)] = MODELS.build(
                dict(self.adapter_cfg, channels=channels))
            self.block_layouts[name] = layout
        self._grid = None
        self._hooks = []
        self._register_hooks(modules)
        self.freeze_backbone()

    # ----------------------------------------------------------------- hooks
    def _register_hooks(self, modules: Dict[str, nn.Module]) -> None:
        if 'tokens' in self.block_layouts.values():
            if self.grid_from not in modules:
                raise ValueError(
                    f"MSLoRABackbone: layout 'tokens' needs the patch grid, but the backbone "
                    f"has no module {self.grid_from!r}; set grid_from to the patch "
                    f'embedding (e.g. one of {[n for n in modules if "embed" in n][:5]}).')
            self._hooks.append(modules[self.grid_from].register_forward_hook(self._grid_hook))
        for name, layout in self.block_layouts.items():
            hook = self._make_block_hook(self.adapters[_adapter_key(name)], layout)
            self._hooks.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def _grid_hook(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) > 1:
            self._grid = tuple(output[1])  # (tokens, (H, W)) from mm* PatchEmbed
        else:
            self._grid = tuple(output.shape[-2:])  # a (B, C, H, W) map

    def _make_block_hook(self, adapter: nn.Module, layout: str):
        def hook(module, args, kwargs, output):
            if isinstance(output, (tuple, list)):
                first = apply_in_layout(adapter, output[0], layout, args, kwargs, self._grid)
                return type(output)([first, *output[1:]])
            return apply_in_layout(adapter, output, layout, args, kwargs, self._grid)
        return hook

    # --------------------------------------------------------- frozen state
    def freeze_backbone(self) -> None:
        """Freeze every backbone parameter except those named by ``trainable``."""
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
