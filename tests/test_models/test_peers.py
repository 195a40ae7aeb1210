"""Peer methods behind the same wrapper: one table of methods x backbones, each checked
the same way (built from a toolbox registry, pretrained at init, only the method's
parameters train, frozen backbone bitwise unchanged), plus the modules' own checks."""
import copy

import pytest
import torch
import torch.nn as nn

from mmslora.models import MSLoRAAdapter, MSLoRABackbone, count_parameters
from mmslora.models.adapter_io import adapter_meta, adapter_state_dict
from mmslora.models.peers import (METHODS, BottleneckAdapter, LoRA, MonaAdapter,
                                  wrapper_cfg, wrapper_kwargs)
from mmslora_testing import (TINY_SWIN, TINY_VIT_MMPRETRAIN, assert_same_outputs,
                             build_in_scope, flat)

# (id, toolbox scope, backbone config)
BACKBONES = [
    # zero_init_residual (mmdet's default for random init) zeroes each block's last BN
    # scale: in a frozen random backbone no gradient would reach the layers before it,
    # which a pretrained backbone does not have
    ('mmdet-resnet18', 'mmdet', dict(type='mmdet.ResNet', depth=18, zero_init_residual=False,
                                     init_cfg=None)),
    ('mmpretrain-vit', 'mmpretrain', dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN)),
    ('mmdet-swin', 'mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN)),
    # depthwise convolutions: LoRA must leave them alone
    ('effnet-lite0', 'mmpretrain', dict(type='mmslora.EfficientNetLite', out_indices=(2, 4, 7),
                                         init_cfg=None)),
]
METHOD_NAMES = list(METHODS)
ADAPTER_CLASSES = dict(lora=LoRA, adapter=BottleneckAdapter, mona=MonaAdapter,
                       mslora=MSLoRAAdapter)
# the zero-initialised weight of each adapter: it must move on the first step
ZERO_INIT = dict(lora='lora_B.weight', adapter='up.weight', mona='up.weight',
                 mslora='proj.up.weight')


@pytest.fixture(params=BACKBONES, ids=[b[0] for b in BACKBONES])
def backbone_case(request):
    return request.param[1:]


def build_method(method, scope, cfg, **overrides):
    torch.manual_seed(0)
    model = build_in_scope(scope, wrapper_cfg(method, cfg, **overrides))
    model.init_weights()
    return model


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_pretrained_at_init_and_parameters_reported(method, backbone_case):
    scope, cfg = backbone_case
    model = build_method(method, scope, cfg)
    assert isinstance(model, MSLoRABackbone)
    plain = build_in_scope(scope, cfg)
    prefix = 'backbone.'
    backbone_state = {k[len(prefix):]: v for k, v in model.state_dict().items()
                      if k.startswith(prefix)}
    assert all(k.startswith((prefix, 'adapters.')) for k in model.state_dict())
    plain.load_state_dict(backbone_state, strict=True)  # keys unchanged by the method
    trainable = dict(model.backbone.named_parameters())
    for name, param in plain.named_parameters():
        param.requires_grad_(trainable[name].requires_grad)
    assert_same_outputs(model, plain, torch.randn(2, 3, 64, 64))

    report = count_parameters(model)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_adapters = sum(p.numel() for p in model.adapters.parameters())
    assert report.backbone == n_backbone and report.adapter == n_adapters
    expected = dict(full=n_backbone, linear_probe=0,
                    bitfit=sum(p.numel() for n, p in model.backbone.named_parameters()
                               if n.endswith('bias'))).get(method, n_adapters)
    assert report.backbone_trainable == report.trainable == expected
    assert report.backbone_share == pytest.approx(expected / n_backbone)
    if method in ADAPTER_CLASSES:
        assert len(model.adapters) > 0
        assert all(isinstance(a, ADAPTER_CLASSES[method]) for a in model.adapters.values())
    else:
        assert len(model.adapters) == 0
    print(f'{method}: {report.backbone_trainable:,d} trainable, '
          f'{100 * report.backbone_share:.2f}% of the backbone')


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_only_the_methods_parameters_train(method, backbone_case):
    scope, cfg = backbone_case
    model = build_method(method, scope, cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_names = {f'backbone.{n}' for n, _ in model.backbone.named_parameters()}
    adapter_names = {n for n, _ in model.named_parameters() if n.startswith('adapters.')}
    expected = dict(
        full=backbone_names, linear_probe=set(),
        bitfit={n for n in backbone_names if n.endswith('bias')}).get(method, adapter_names)
    assert names == expected and (expected or method == 'linear_probe')

    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        last = flat(model(x))[-1]
    head = nn.Linear(last.shape[1], 3)  # trains in every method, alone in a linear probe
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before_adapters = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    head_before = head.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        outs = flat(model(x))
        loss = sum(t.pow(2).mean() for t in outs) + head(outs[-1].mean((2, 3))).pow(2).sum()
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad <= expected and bool(with_grad) == bool(expected)
        opt.step()
    assert not torch.equal(head.weight, head_before)

    after = model.backbone.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(after[k], v)}
    if method == 'full':
        assert changed
    else:  # bitwise: weights and running statistics
        trained = {n[len('backbone.'):] for n in expected if n.startswith('backbone.')}
        assert changed <= trained
        assert bool(changed) == bool(trained)
    if method in ZERO_INIT:
        for key in model.adapters:  # every adapter was reached through its hook
            name = f'{key}.{ZERO_INIT[method]}'
            assert not torch.equal(model.adapters.state_dict()[name], before_adapters[name]), name


# ----------------------------------------------------------------------- LoRA
def test_lora_skips_depthwise_and_custom_padding_convs_of_effnet():
    model = build_method('lora', 'mmpretrain', BACKBONES[3][2])
    modules = dict(model.backbone.named_modules())
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and set(depthwise) <= set(model.skipped_layers)
    assert all('depthwise' in model.skipped_layers[n] for n in depthwise)
    assert 'stem.conv' in model.skipped_layers  # 3x3 stride 2 with TF 'SAME' padding
    assert all(modules[n].groups == 1 for n in model.layer_names)
    assert 'head_conv.conv' in model.layer_names and len(model.layer_names) == 32


@pytest.mark.parametrize('layer, shape', [
    (nn.Linear(12, 20), (2, 5, 12)),
    (nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 9, 11)),
    (nn.Conv2d(6, 10, 3, padding=2, dilation=2, bias=False), (1, 6, 8, 8)),
    (nn.Conv2d(6, 10, (1, 3), stride=(1, 2), padding=(0, 1)), (1, 6, 7, 8)),
])
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


@pytest.mark.parametrize('layer, match', [
    (nn.Conv2d(8, 8, 3, groups=8), 'depthwise convolution'),
    (nn.Conv2d(8, 16, 3, groups=2), 'grouped convolution'),
    (nn.Conv2d(8, 16, 3, padding=1, padding_mode='reflect'), 'padding_mode'),
])
def test_lora_declines_layers_it_cannot_update_exactly(layer, match):
    assert match in LoRA.skip_reason(layer)
    with pytest.raises(ValueError, match=match):
        LoRA.from_layer(layer)


@pytest.mark.parametrize('case', [0, 1], ids=['mmdet-resnet18', 'mmpretrain-vit'])
def test_lora_merged_into_weights_equals_hooked_model(case):
    _, scope, cfg = BACKBONES[case]
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
    model = build_method('lora', 'mmpretrain', BACKBONES[1][2],
                         adapter=dict(targets=r'layers\.\d+\.attn\.qkv'))
    assert model.layer_names == ['layers.0.attn.qkv', 'layers.1.attn.qkv']
    assert sorted(model.adapters) == ['layers_0_attn_qkv', 'layers_1_attn_qkv']
    mmseg_vit = dict(type='mmseg.VisionTransformer', img_size=(64, 64), patch_size=16,
                     embed_dims=32, num_layers=1, num_heads=2, mlp_ratio=2, init_cfg=None)
    model = build_method('lora', 'mmseg', mmseg_vit)
    assert 'MultiheadAttention' in model.skipped_layers['layers.0.attn.attn.out_proj']
    assert 'layers.0.ffn.layers.1' in model.layer_names
    with pytest.raises(ValueError, match='found no layer'):
        build_method('lora', 'mmdet', BACKBONES[0][2], adapter=dict(targets='nothing'))
    with pytest.raises(ValueError, match='select its layers with `targets`'):
        build_method('lora', 'mmdet', BACKBONES[0][2], blocks=dict(pattern=r'layer\d'))


def test_layer_adapter_meta_and_state_dict():
    model = build_method('lora', 'mmdet', BACKBONES[0][2])
    meta = adapter_meta(model)['wrappers']['<root>']
    assert meta['adapter']['type'] == 'mmslora.LoRA' and meta['layers'] == model.layer_names
    state = adapter_state_dict(model)
    assert state and all(k.startswith('adapters.') for k in state)
    probe = build_method('linear_probe', 'mmdet', BACKBONES[0][2])
    assert adapter_meta(probe)['wrappers']['<root>']['adapter'] is None
    assert adapter_state_dict(probe) == {}


# ---------------------------------------------------------------- switches
def test_full_fine_tuning_lets_norms_follow_train():
    model = build_method('full', 'mmpretrain', dict(type='mmpretrain.ResNet', depth=18,
                                                    init_cfg=None))
    model.train()
    bns = [m for m in model.backbone.modules() if hasattr(m, 'running_mean')]
    assert bns and all(m.training for m in bns)
    assert all(p.requires_grad for p in model.backbone.parameters())
    frozen = build_method('bitfit', 'mmpretrain', dict(type='mmpretrain.ResNet', depth=18,
                                                       init_cfg=None))
    frozen.train()
    assert not any(m.training for m in frozen.backbone.modules() if hasattr(m, 'running_mean'))


def test_wrapper_kwargs_and_invalid_switches():
    kwargs = wrapper_kwargs('lora', adapter=dict(rank=4))
    assert kwargs['adapter'] == dict(type='mmslora.LoRA', rank=4, alpha=8)
    assert METHODS['lora']['adapter']['rank'] == 8  # the table is not modified
    assert wrapper_kwargs('mslora', adapter=None)['adapter'] is None
    assert wrapper_kwargs('bitfit', trainable=('bias', 'norm'))['trainable'] == ('bias', 'norm')
    with pytest.raises(KeyError, match='unknown method'):
        wrapper_kwargs('prompt')
    with pytest.raises(ValueError, match='has no adapter'):
        wrapper_kwargs('bitfit', adapter=dict(rank=4))
    with pytest.raises(ValueError, match='no meaning with freeze=False'):
        MSLoRABackbone(backbone=BACKBONES[0][2], adapter=None, freeze=False,
                       trainable=('bias', ))
    with pytest.raises(TypeError, match="`adapter` must be None or a config dict"):
        MSLoRABackbone(backbone=BACKBONES[0][2], adapter='mslora')
    # omitting `adapter` still means MSLoRA
    default = MSLoRABackbone(backbone=BACKBONES[0][2])
    assert all(isinstance(a, MSLoRAAdapter) for a in default.adapters.values())


# ------------------------------------------------------------- block peers
def test_bottleneck_adapter_identity_at_init_and_formula():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(channels=16, hidden_dim=4, scale=0.5)
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(adapter(x), x)
    nn.init.normal_(adapter.up.weight)
    nn.init.normal_(adapter.up.bias)
    down = torch.relu(torch.einsum('bchw,dc->bdhw', x, adapter.down.weight.flatten(1))
                      + adapter.down.bias[:, None, None])
    up = torch.einsum('bdhw,cd->bchw', down, adapter.up.weight.flatten(1)) \
        + adapter.up.bias[:, None, None]
    torch.testing.assert_close(adapter(x), x + 0.5 * up)
    assert sum(p.numel() for p in adapter.parameters()) == 16 * 4 + 4 + 4 * 16 + 16


def test_mona_identity_at_init_and_formula():
    torch.manual_seed(0)
    adapter = MonaAdapter(channels=16, hidden_dim=8).eval()
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(adapter(x), x)
    assert torch.all(adapter.gamma == 1e-6) and torch.all(adapter.gamma_x == 1)
    nn.init.normal_(adapter.up.weight)
    f = x.permute(0, 2, 3, 1)
    t = adapter.down(nn.functional.layer_norm(f, (16, ), adapter.norm.weight, adapter.norm.bias)
                     * adapter.gamma + f * adapter.gamma_x).permute(0, 3, 1, 2)
    convs = adapter.filter.convs
    t = t + (convs[0](t) + convs[1](t) + convs[2](t)) / 3
    t = t + adapter.filter.projector(t)
    expected = x + adapter.up(nn.functional.gelu(t.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    torch.testing.assert_close(adapter(x), expected)
    d, c = 8, 16
    n_params = (2 * c + 2 * c + (c * d + d) + (9 + 25 + 49 + 3) * d + (d * d + d) + (d * c + c))
    assert sum(p.numel() for p in adapter.parameters()) == n_params


@pytest.mark.parametrize('cls', [BottleneckAdapter, MonaAdapter])
def test_block_peers_name_a_wrong_input(cls):
    with pytest.raises(ValueError, match=rf'{cls.__name__} expects a \(B, 16, H, W\) feature map'):
        cls(channels=16)(torch.randn(1, 8, 4, 4))
