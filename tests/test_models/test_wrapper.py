"""One table of backbones from mmdet, mmseg and mmpretrain, each checked the same way."""

import pytest
import torch

from mmslora.models import MSLoRABackbone
from mmslora.models.layouts import apply_in_layout
from mmslora.utils import count_parameters
from mmslora_testing import assert_same_outputs, build_in_scope, flat

TINY_SWIN = dict(embed_dims=32, depths=(2, 2), num_heads=(1, 2), window_size=4,
                 out_indices=(0, 1), init_cfg=None)
TINY_VIT_MMSEG = dict(img_size=(64, 64), patch_size=16, embed_dims=32, num_layers=2,
                      num_heads=2, mlp_ratio=2, out_indices=(1, ), init_cfg=None)
TINY_VIT_MMPRETRAIN = dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                     feedforward_channels=64),
                           img_size=64, patch_size=16, out_type='featmap', init_cfg=None)

# (id, toolbox scope, backbone config, number of blocks adapted)
CASES = [
    ('mmdet-resnet18', 'mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None), 8),
    ('mmdet-resnet50', 'mmdet', dict(type='mmdet.ResNet', depth=50, init_cfg=None), 16),
    ('mmdet-swin', 'mmdet', dict(type='mmdet.SwinTransformer', strides=(4, 2),
                                 **TINY_SWIN), 4),
    ('mmseg-resnetv1c', 'mmseg', dict(type='mmseg.ResNetV1c', depth=18, init_cfg=None), 8),
    ('mmseg-swin', 'mmseg', dict(type='mmseg.SwinTransformer', strides=(4, 2),
                                 **TINY_SWIN), 4),
    ('mmseg-vit', 'mmseg', dict(type='mmseg.VisionTransformer', **TINY_VIT_MMSEG), 2),
    ('mmpretrain-resnet18', 'mmpretrain',
     dict(type='mmpretrain.ResNet', depth=18, init_cfg=None), 8),
    ('mmpretrain-swin', 'mmpretrain',
     dict(type='mmpretrain.SwinTransformer', img_size=64, window_size=4, out_indices=(1, ),
          arch=dict(embed_dims=32, depths=(2, 2), num_heads=(1, 2)), init_cfg=None), 4),
    ('mmpretrain-vit', 'mmpretrain',
     dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN), 2),
]
IDS = [case[0] for case in CASES]


def wrap(backbone_cfg, **kwargs):
    return dict(type='mmslora.MSLoRABackbone', backbone=backbone_cfg, **kwargs)


def backbone_state(model):
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    torch.manual_seed(0)
    _, scope, cfg, n_blocks = request.param
    return scope, cfg, n_blocks


def test_builds_from_toolbox_registry(case):
    scope, cfg, n_blocks = case
    model = build_in_scope(scope, wrap(cfg))
    assert isinstance(model, MSLoRABackbone)
    assert len(model.adapters) == n_blocks


def test_state_dict_keys_load_into_plain_backbone_and_outputs_equal(case):
    scope, cfg, _ = case
    model = build_in_scope(scope, wrap(cfg))
    model.init_weights()
    plain = build_in_scope(scope, cfg)
    backbone_keys = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
                     if k.startswith('backbone.')}
    assert set(model.state_dict()) == {f'backbone.{k}' for k in backbone_keys} | {
        k for k in model.state_dict() if k.startswith('adapters.')}
    plain.load_state_dict(backbone_keys, strict=True)
    # frozen like the wrapped one: torch's MultiheadAttention takes its fused fast path
    # only when no parameter requires grad, which changes the last bits of the output
    plain.requires_grad_(False)
    assert_same_outputs(model, plain, torch.randn(2, 3, 64, 64))


def test_only_adapters_train_and_backbone_state_is_unchanged(case):
    scope, cfg, _ = case
    model = build_in_scope(scope, wrap(cfg))
    model.init_weights()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith('adapters.') for n in trainable)
    before_backbone = backbone_state(model)
    before_adapters = {n: p.detach().clone() for n, p in model.adapters.named_parameters()}

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(t.float().pow(2).mean() for t in flat(model(x)))
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        opt.step()

    after = backbone_state(model)
    assert after.keys() == before_backbone.keys()
    for k, v in before_backbone.items():
        assert torch.equal(after[k], v), f'backbone tensor {k} changed'
    for key, adapter in model.adapters.items():
        # Proj's up-projection moves on step 1; the product gives Trans its first
        # gradient on step 2 (too small to move random-init weights by SGD in float32)
        assert not torch.equal(adapter.proj.up.weight, before_adapters[f'{key}.proj.up.weight'])
        assert adapter.trans.expand.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.eval()
        changed = flat(model(x))
    for adapter in model.adapters.values():
        torch.nn.init.zeros_(adapter.proj.up.weight)
    with torch.no_grad():
        identity = flat(model(x))
    assert any(not torch.equal(a, b) for a, b in zip(changed, identity))


def test_norms_stay_in_eval_mode_even_if_backbone_asks_otherwise():
    model = build_in_scope('mmseg', wrap(dict(type='mmseg.ResNetV1c', depth=18,
                                              norm_eval=False, init_cfg=None)))
    model.train()
    bns = [m for m in model.backbone.modules() if hasattr(m, 'running_mean')]
    assert bns and not any(m.training for m in bns)
    assert all(a.training for a in model.adapters.values())
    unfrozen = build_in_scope('mmseg', wrap(dict(type='mmseg.ResNetV1c', depth=18,
                                                 init_cfg=None), norm_eval=False))
    unfrozen.train()
    assert all(m.training for m in unfrozen.backbone.modules() if hasattr(m, 'running_mean'))


@pytest.mark.parametrize('trainable, suffixes', [
    (('bias', ), ('bias', )),
    (('norm', ), ('bn1.weight', 'bn1.bias', 'bn2.weight', 'bn2.bias', 'downsample.1.weight',
                  'downsample.1.bias')),
])
def test_trainable_options(trainable, suffixes):
    model = build_in_scope('mmpretrain', wrap(dict(type='mmpretrain.ResNet', depth=18,
                                                   init_cfg=None), trainable=trainable))
    model.init_weights()
    names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(suffixes) for n in names)
    assert not any('conv' in n and n.endswith('weight') for n in names)


@pytest.mark.parametrize('scope, cfg', [
    ('mmdet', dict(type='mmdet.ResNet', depth=50, init_cfg=None)),
    ('mmdet', dict(type='mmdet.SwinTransformer', init_cfg=None)),  # Swin-T defaults
    ('mmpretrain', dict(type='mmpretrain.VisionTransformer', arch='b', img_size=224,
                        patch_size=16, init_cfg=None)),
], ids=['mmdet-R50', 'mmdet-Swin-T', 'mmpretrain-ViT-B'])
def test_default_adapters_train_under_five_percent(scope, cfg):
    report = count_parameters(build_in_scope(scope, wrap(cfg)))
    assert report.adapter == report.backbone_trainable == report.trainable > 0
    assert report.backbone_share < 0.05


def test_gradient_checkpointing_blocks_still_train_adapters():
    model = build_in_scope('mmdet', wrap(dict(type='mmdet.ResNet', depth=18, with_cp=True,
                                              init_cfg=None)))
    model.train()
    for adapter in model.adapters.values():
        torch.nn.init.normal_(adapter.proj.up.weight, std=0.01)
    x = torch.randn(1, 3, 32, 32, requires_grad=False)
    sum(t.mean() for t in model(x)).backward()
    for adapter in model.adapters.values():
        assert adapter.trans.expand.weight.grad.abs().sum() > 0


def test_custom_block_pattern_for_any_backbone():
    model = build_in_scope('mmpretrain', wrap(
        dict(type='mmpretrain.MobileNetV2', widen_factor=0.5, out_indices=(7, ), init_cfg=None),
        blocks=dict(pattern=r'layer[1-7]', layout='nchw'),
        adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4)))
    assert sorted(model.adapters) == [f'layer{i}' for i in range(1, 8)]
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    assert model(x)[0].shape[1] == 1280  # MobileNetV2 keeps 1280 channels below width 1


def test_no_block_matched_lists_patterns_and_candidates():
    with pytest.raises(ValueError, match=r"matched the patterns 'nothing\\\.here'.*"
                                         r"candidate module names: \['layer1'"):
        build_in_scope('mmdet', wrap(dict(type='mmdet.ResNet', depth=18, init_cfg=None),
                                     blocks=dict(pattern=r'nothing\.here')))


def test_unknown_backbone_type_says_how_to_fix():
    with pytest.raises(KeyError, match=r"'NoSuchNet' is not registered.*fully scoped"):
        MSLoRABackbone(backbone=dict(type='NoSuchNet'))


def test_groups_not_dividing_channels():
    with pytest.raises(ValueError, match='channels=32 is not divisible by groups=3'):
        build_in_scope('mmdet', wrap(dict(type='mmdet.SwinTransformer', **TINY_SWIN),
                                     adapter=dict(type='mmslora.MSLoRAAdapter', groups=3,
                                                  hidden_dim=63)))


def test_tokens_that_do_not_fit_the_patch_grid():
    with pytest.raises(ValueError, match=r'\(1, 12, 8\) does not fit the patch grid 4x4'):
        apply_in_layout(lambda t: t, torch.randn(1, 12, 8), 'tokens', (), {}, grid=(4, 4))
    with pytest.raises(ValueError, match='does not fit the patch grid 4x4'):
        apply_in_layout(lambda t: t, torch.randn(1, 17, 8), 'nlc', (None, (4, 4)), {})


def test_tokens_layout_keeps_extra_tokens():
    x = torch.randn(2, 3 + 6, 8)
    out = apply_in_layout(lambda t: t * 2, x, 'tokens', (), {}, grid=(2, 3))
    assert torch.equal(out[:, :3], x[:, :3])
    assert torch.equal(out[:, 3:], 2 * x[:, 3:])
