"""LoRA on the backbone's own layers (mmslora/models/peers/lora.py)."""

import copy

import pytest
import torch
import torch.nn as nn

from mmslora.models.adapter_io import adapter_meta, adapter_state_dict
from mmslora.models.peers import LoRA
from mmslora_testing import PEER_BACKBONES, build_in_scope, build_method, flat


def test_lora_skips_depthwise_and_custom_padding_convs_of_effnet():
    model = build_method('lora', 'mmpretrain', PEER_BACKBONES[3][2])
    modules = dict(model.backbone.named_modules())
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and set(depthwise) <= set(model.skipped_layers)
    assert all('depthwise' in model.skipped_layers[n] for n in depthwise)
    assert 'stem.conv' in model.skipped_layers  # 3x3 stride 2 with TF 'SAME' padding
    assert all(modules[n].groups == 1 for n in model.layer_names)
    assert 'head_conv.conv' in model.layer_names and len(model.layer_names) == 32


@pytest.mark.parametrize(
    'layer, shape',
    [
        (nn.Linear(12, 20), (2, 5, 12)),
        (nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 9, 11)),
        (nn.Conv2d(6, 10, 3, padding=2, dilation=2, bias=False), (1, 6, 8, 8)),
        (nn.Conv2d(6, 10, (1, 3), stride=(1, 2), padding=(0, 1)), (1, 6, 7, 8)),
    ],
)
def test_lora_update_is_the_rank_r_weight_delta(layer, shape):
    torch.manual_seed(0)
    lora = LoRA.from_layer(layer, rank=4, alpha=8)
    x = torch.randn(shape)
    assert torch.equal(layer(x) + lora(x), layer(x))  # B = 0 at start
    nn.init.normal_(lora.lora_B.weight)
    delta = lora.delta_weight()
    assert delta.shape == layer.weight.shape
    assert torch.linalg.matrix_rank(delta.flatten(1)) <= 4
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        merged.weight += delta
    torch.testing.assert_close(layer(x) + lora(x), merged(x), rtol=1e-4, atol=1e-4)
    assert lora.scaling == 2.0


@pytest.mark.parametrize(
    'layer, match',
    [
        (nn.Conv2d(8, 8, 3, groups=8), 'depthwise convolution'),
        (nn.Conv2d(8, 16, 3, groups=2), 'grouped convolution'),
        (nn.Conv2d(8, 16, 3, padding=1, padding_mode='reflect'), 'padding_mode'),
    ],
)
def test_lora_declines_layers_it_cannot_update_exactly(layer, match):
    assert match in LoRA.skip_reason(layer)
    with pytest.raises(ValueError, match=match):
        LoRA.from_layer(layer)


@pytest.mark.parametrize('case', [0, 1], ids=['mmdet-resnet18', 'mmpretrain-vit'])
def test_lora_merged_into_weights_equals_hooked_model(case):
    _, scope, cfg = PEER_BACKBONES[case]
    model = build_method('lora', scope, cfg)
    for adapter in model.adapters.values():
        nn.init.normal_(adapter.lora_B.weight, std=0.02)
    merged = build_in_scope(scope, cfg)
    merged.load_state_dict(model.backbone.state_dict())
    layers = dict(merged.named_modules())
    with torch.no_grad():
        for name in model.layer_names:
            layers[name].weight += model.adapters[name.replace('.', '_')].delta_weight()
    model.eval()
    merged.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(flat(model(x)), flat(merged(x))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lora_targets_pick_layers_and_mha_projections_are_skipped():
    model = build_method(
        'lora', 'mmpretrain', PEER_BACKBONES[1][2], adapter=dict(targets=r'layers\.\d+\.attn\.qkv')
    )
    assert model.layer_names == ['layers.0.attn.qkv', 'layers.1.attn.qkv']
    assert sorted(model.adapters) == ['layers_0_attn_qkv', 'layers_1_attn_qkv']
    mmseg_vit = dict(
        type='mmseg.VisionTransformer',
        img_size=(64, 64),
        patch_size=16,
        embed_dims=32,
        num_layers=1,
        num_heads=2,
        mlp_ratio=2,
        init_cfg=None,
    )
    model = build_method('lora', 'mmseg', mmseg_vit)
    assert 'MultiheadAttention' in model.skipped_layers['layers.0.attn.attn.out_proj']
    assert 'layers.0.ffn.layers.1' in model.layer_names
    with pytest.raises(ValueError, match='found no layer'):
        build_method('lora', 'mmdet', PEER_BACKBONES[0][2], adapter=dict(targets='nothing'))
    with pytest.raises(ValueError, match='select its layers with `targets`'):
        build_method('lora', 'mmdet', PEER_BACKBONES[0][2], blocks=dict(pattern=r'layer\d'))


def test_layer_adapter_meta_and_state_dict():
    model = build_method('lora', 'mmdet', PEER_BACKBONES[0][2])
    meta = adapter_meta(model)['wrappers']['<root>']
    assert meta['adapter']['type'] == 'mmslora.LoRA' and meta['layers'] == model.layer_names
    state = adapter_state_dict(model)
    assert state and all(k.startswith('adapters.') for k in state)
    probe = build_method('linear_probe', 'mmdet', PEER_BACKBONES[0][2])
    assert adapter_meta(probe)['wrappers']['<root>']['adapter'] is None
    assert adapter_state_dict(probe) == {}
