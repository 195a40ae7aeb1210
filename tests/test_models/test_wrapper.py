"""One table of backbones from mmdet, mmseg and mmpretrain, each checked the same way."""

import contextlib
import copy
import logging
import re

import pytest
import torch
from mmengine.registry import DefaultScope

from mmslora.models import MSLoRABackbone, count_parameters
from mmslora_testing import (
    HRNET_W18_TINY,
    RESNET18,
    TINY_SWIN,
    TINY_VIT_MMPRETRAIN,
    TINY_VIT_MMSEG,
    assert_same_outputs,
    build_in_scope,
    flat,
    wrap,
)

# (id, toolbox scope, backbone config, number of blocks adapted)
CASES = [
    ('mmdet-resnet18', 'mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None), 8),
    ('mmdet-resnet50', 'mmdet', dict(type='mmdet.ResNet', depth=50, init_cfg=None), 16),
    ('mmdet-swin', 'mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN), 4),
    ('mmseg-resnetv1c', 'mmseg', dict(type='mmseg.ResNetV1c', depth=18, init_cfg=None), 8),
    ('mmseg-swin', 'mmseg', dict(type='mmseg.SwinTransformer', **TINY_SWIN), 4),
    ('mmseg-vit', 'mmseg', dict(type='mmseg.VisionTransformer', **TINY_VIT_MMSEG), 2),
    (
        'mmpretrain-resnet18',
        'mmpretrain',
        dict(type='mmpretrain.ResNet', depth=18, init_cfg=None),
        8,
    ),
    (
        'mmpretrain-swin',
        'mmpretrain',
        dict(
            type='mmpretrain.SwinTransformer',
            img_size=64,
            window_size=4,
            out_indices=(1,),
            arch=dict(embed_dims=32, depths=(2, 2), num_heads=(1, 2)),
            init_cfg=None,
        ),
        4,
    ),
    (
        'mmpretrain-vit',
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
        2,
    ),
]
IDS = [case[0] for case in CASES]


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
    backbone_keys = {
        k[len('backbone.') :]: v for k, v in model.state_dict().items() if k.startswith('backbone.')
    }
    assert set(model.state_dict()) == {f'backbone.{k}' for k in backbone_keys} | {
        k for k in model.state_dict() if k.startswith('adapters.')
    }
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
    model = build_in_scope(
        'mmseg', wrap(dict(type='mmseg.ResNetV1c', depth=18, norm_eval=False, init_cfg=None))
    )
    model.train()
    bns = [m for m in model.backbone.modules() if hasattr(m, 'running_mean')]
    assert bns and not any(m.training for m in bns)
    assert all(a.training for a in model.adapters.values())
    unfrozen = build_in_scope(
        'mmseg', wrap(dict(type='mmseg.ResNetV1c', depth=18, init_cfg=None), norm_eval=False)
    )
    unfrozen.train()
    assert all(m.training for m in unfrozen.backbone.modules() if hasattr(m, 'running_mean'))


@pytest.mark.parametrize(
    'trainable, suffixes',
    [
        (('bias',), ('bias',)),
        (
            ('norm',),
            (
                'bn1.weight',
                'bn1.bias',
                'bn2.weight',
                'bn2.bias',
                'downsample.1.weight',
                'downsample.1.bias',
            ),
        ),
    ],
)
def test_trainable_options(trainable, suffixes):
    model = build_in_scope(
        'mmpretrain',
        wrap(dict(type='mmpretrain.ResNet', depth=18, init_cfg=None), trainable=trainable),
    )
    model.init_weights()
    names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(suffixes) for n in names)
    assert not any('conv' in n and n.endswith('weight') for n in names)


@pytest.mark.parametrize(
    'scope, cfg',
    [
        ('mmdet', dict(type='mmdet.ResNet', depth=50, init_cfg=None)),
        ('mmdet', dict(type='mmdet.SwinTransformer', init_cfg=None)),  # Swin-T defaults
        (
            'mmpretrain',
            dict(
                type='mmpretrain.VisionTransformer',
                arch='b',
                img_size=224,
                patch_size=16,
                init_cfg=None,
            ),
        ),
    ],
    ids=['mmdet-R50', 'mmdet-Swin-T', 'mmpretrain-ViT-B'],
)
def test_default_adapters_train_under_five_percent(scope, cfg):
    report = count_parameters(build_in_scope(scope, wrap(cfg)))
    assert report.adapter == report.backbone_trainable == report.trainable > 0
    assert report.backbone_share < 0.05


def test_gradient_checkpointing_blocks_still_train_adapters():
    model = build_in_scope(
        'mmdet', wrap(dict(type='mmdet.ResNet', depth=18, with_cp=True, init_cfg=None))
    )
    model.train()
    for adapter in model.adapters.values():
        torch.nn.init.normal_(adapter.proj.up.weight, std=0.01)
    x = torch.randn(1, 3, 32, 32, requires_grad=False)
    sum(t.mean() for t in model(x)).backward()
    for adapter in model.adapters.values():
        assert adapter.trans.expand.weight.grad.abs().sum() > 0


def test_unscoped_backbone_outside_the_toolbox_scope_says_to_scope_it():
    # outside any toolbox's scope: MMEngine's own (a script with no default scope
    # searches mmslora's registry and its parent, MMEngine's, the same way)
    with DefaultScope.overwrite_default_scope('mmengine'), pytest.raises(KeyError) as info:
        MSLoRABackbone(backbone=dict(type='ResNet', depth=18, init_cfg=None))
    message = str(info.value)
    assert "backbone type 'ResNet' is not registered where it was looked up" in message
    assert re.search(r'ResNet is not in the (mmslora|mmengine)::model registry', message)
    assert "Write it fully scoped, e.g. 'mmdet.ResNet'" in message
    assert "default_scope='mmdet'" in message


def test_misspelled_scoped_backbone_names_the_type():
    with pytest.raises(KeyError) as info:
        MSLoRABackbone(backbone=dict(type='mmseg.VisionTransformerX'))
    message = str(info.value)
    assert "backbone type 'mmseg.VisionTransformerX' is not registered" in message
    assert "'mmseg.VisionTransformer'" in message  # the spelling it should have


def test_unscoped_backbone_builds_in_the_toolbox_default_scope():
    """`type='ResNet'` is fine where the toolbox is the default scope (its configs)."""
    from mmdet.models.backbones import ResNet

    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MSLoRABackbone(backbone=dict(type='ResNet', depth=18, init_cfg=None))
    assert type(model.backbone) is ResNet


def test_unknown_backbone_type_says_how_to_fix():
    with pytest.raises(KeyError, match=r"'NoSuchNet' is not registered.*fully scoped"):
        MSLoRABackbone(backbone=dict(type='NoSuchNet'))


def test_groups_not_dividing_channels():
    with pytest.raises(ValueError, match='channels=32 is not divisible by groups=3'):
        build_in_scope(
            'mmdet',
            wrap(
                dict(type='mmdet.SwinTransformer', **TINY_SWIN),
                adapter=dict(
                    type='mmslora.MSLoRAAdapter', groups=3, hidden_dim=63, strict_groups=True
                ),
            ),
        )
    # not strict: fewer groups where they do not divide, listed in the parameter report
    hrnet = dict(type='mmdet.HRNet', extra=HRNET_W18_TINY, init_cfg=None)
    model = build_in_scope(
        'mmdet', wrap(hrnet, adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=64))
    )
    report = count_parameters(model)
    assert 'MSLoRAAdapter groups 8 -> 2 (C=18, D=64): 3 adapters' in report.notes
    assert 'groups 8 -> 2' in report.table()
    plain = build_in_scope('mmdet', hrnet)
    plain.load_state_dict(model.backbone.state_dict())
    assert_same_outputs(model, plain, torch.randn(1, 3, 64, 64))


def test_block_channels_are_read_off_the_forward():
    """Res2Net's Bottle2neck registers its per-scale norms (26 channels) after its
    output layer (256): the channels come from the block's output, not module order."""
    torch.manual_seed(0)
    model = build_in_scope('mmdet', wrap(dict(type='mmdet.Res2Net', depth=50, init_cfg=None)))
    assert model.adapters['layer1_0'].channels == 256
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))


# ------------------------------------------------ switching and named adapter sets
def trained_resnet(seed=0, **kwargs):
    """A wrapped ResNet-18 whose default adapters have been moved off their zero start."""
    torch.manual_seed(seed)
    model = MSLoRABackbone(backbone=RESNET18, **kwargs)
    model.init_weights()
    perturb(model.adapter_set().modules)
    return model


def perturb(adapters, std=0.05):
    with torch.no_grad():
        for adapter in adapters.values():
            for name in adapter.zero_init:
                dict(adapter.named_parameters())[name].normal_(std=std)


def plain_of(model):
    plain = build_in_scope('mmdet', RESNET18)
    plain.load_state_dict(model.backbone.state_dict())
    return plain


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return flat(model(x))


def differ(a, b):
    return any(not torch.equal(u, v) for u, v in zip(a, b))


def test_disable_adapters_gives_the_plain_backbone_exactly():
    model = trained_resnet()
    x = torch.randn(2, 3, 32, 32)
    adapted = outputs(model, x)
    with model.disable_adapters():
        assert_same_outputs(model, plain_of(model), x)
    assert not differ(outputs(model, x), adapted)  # back on after the context
    assert differ(adapted, outputs(plain_of(model), x))


def test_remove_adapters_detaches_the_hooks_for_good():
    model = trained_resnet()
    copy_ = copy.deepcopy(model)
    model.remove_adapters()
    x = torch.randn(1, 3, 32, 32)
    assert_same_outputs(model, plain_of(model), x)
    assert 'adapters.layer1_0.proj.up.weight' in model.state_dict()  # modules stay
    # a deep copy (EMA) has hooks of its own, untouched by the original's removal
    assert differ(outputs(copy_, x), outputs(model, x))


def test_two_named_sets_switch_outputs_without_rebuilding():
    model = trained_resnet()
    added = model.add_adapter('task_b', dict(type='mmslora.MSLoRAAdapter', hidden_dim=16))
    assert model.adapter_names == ['default', 'task_b'] and model.active_adapter == 'default'
    assert added.blocks == model.block_layouts
    assert not any(p.requires_grad for p in model.adapter_set('task_b').modules.parameters())
    x = torch.randn(1, 3, 32, 32)
    out_default = outputs(model, x)

    model.set_adapter('task_b')
    assert all(p.requires_grad for p in model.adapter_set('task_b').modules.parameters())
    assert not any(p.requires_grad for p in model.adapters.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert_same_outputs(model, plain_of(model), x)  # task_b is at its zero start
    modules_before = list(model.modules())
    perturb(model.adapter_set('task_b').modules)
    out_b = outputs(model, x)
    assert differ(out_b, out_default)

    model.set_adapter('default')
    assert not differ(outputs(model, x), out_default)
    model.set_adapter('task_b')
    assert not differ(outputs(model, x), out_b)
    assert list(model.modules()) == modules_before  # switching builds nothing
    assert {k.split('.')[0] for k in model.state_dict()} == {'backbone', 'adapters', 'adapter_sets'}
    assert 'adapter_sets.task_b.layer1_0.proj.up.weight' in model.state_dict()


def test_named_set_of_another_method_and_its_errors():
    model = trained_resnet()
    model.add_adapter('lora', dict(type='mmslora.LoRA', rank=2))
    model.set_adapter('lora')
    assert model.adapter_set('lora').placement == 'layer' and model.placement == 'block'
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter('lora', dict(type='mmslora.LoRA'))
    with pytest.raises(ValueError, match='must be a Python identifier'):
        model.add_adapter('task.b', dict(type='mmslora.LoRA'))
    with pytest.raises(
        KeyError,
        match=r"no adapter set 'nope'; the sets are \['default', "
        r"'lora'\]",
    ):
        model.set_adapter('nope')
    with pytest.raises(ValueError, match='no block of ResNet matched'):
        model.add_adapter('bad', dict(type='mmslora.MSLoRAAdapter'), blocks=dict(pattern='nothing'))
    assert model.adapter_names == ['default', 'lora'] and 'bad' not in model.adapter_sets
    model.delete_adapter('lora')
    assert model.adapter_names == ['default'] and model.active_adapter == 'default'
    with pytest.raises(ValueError, match='cannot be deleted'):
        model.delete_adapter('default')


def test_sets_train_separately():
    model = trained_resnet()
    model.add_adapter('task_b', dict(type='mmslora.MSLoRAAdapter', hidden_dim=16))
    default_before = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    model.set_adapter('task_b')
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        opt.zero_grad()
        sum(t.pow(2).mean() for t in flat(model(x))).backward()
        opt.step()
    assert all(torch.equal(v, model.adapters.state_dict()[k]) for k, v in default_before.items())
    assert any(
        p.abs().sum() > 0
        for n, p in model.adapter_set('task_b').modules.named_parameters()
        if n.endswith('proj.up.weight')
    )


@pytest.mark.parametrize(
    'adapter, arg',
    [(dict(type='mmslora.MSLoRAAdapter'), 'hidden_dim'), (dict(type='mmslora.LoRA'), 'rank')],
)
def test_a_parameter_budget_sets_the_widest_adapter_that_meets_it(adapter, arg):
    from mmslora.models.wrapper import BUDGET_WIDTHS

    model = MSLoRABackbone(backbone=RESNET18, adapter=adapter, budget=0.02)
    report = count_parameters(model)
    assert report.adapter <= 0.02 * report.backbone
    width = next(a for a in model.adapters.values())
    chosen = width.rank if arg == 'rank' else width.proj.down.out_channels
    assert any(f'budget 2.00% of the backbone: {arg}={chosen}' in n for n in report.notes)
    wider = BUDGET_WIDTHS[BUDGET_WIDTHS.index(chosen) - 1]
    bigger = MSLoRABackbone(backbone=RESNET18, adapter=dict(adapter, **{arg: wider}))
    assert count_parameters(bigger).adapter > 0.02 * report.backbone  # the widest that fits
    with pytest.raises(ValueError, match=r'budget must be a share of the backbone in \(0, 1\)'):
        MSLoRABackbone(backbone=RESNET18, adapter=adapter, budget=5)
    with pytest.raises(ValueError, match='raise the budget'):
        MSLoRABackbone(backbone=RESNET18, adapter=adapter, budget=1e-7)


MOBILENET_V3_SMALL = dict(type='mmpretrain.MobileNetV3', arch='small', init_cfg=None)


@contextlib.contextmanager
def logged():
    """The messages mmengine's current logger emits inside the context."""
    from mmengine.logging import MMLogger

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_without_a_width_the_adapters_stay_within_five_percent():
    """The class default (hidden_dim=64) where it fits (R-18), the widest width that
    does where it does not (MobileNetV3-small: 64 would be about 11%); the width built
    is recorded in the set's config."""
    from mmslora.models.wrapper import DEFAULT_BUDGET

    wide = MSLoRABackbone(backbone=RESNET18, adapter=dict(type='mmslora.MSLoRAAdapter'))
    assert wide.adapter_cfg == dict(type='mmslora.MSLoRAAdapter', hidden_dim=64)
    assert not wide.notes and count_parameters(wide).backbone_share <= DEFAULT_BUDGET

    with logged() as messages:
        small = build_in_scope('mmpretrain', wrap(MOBILENET_V3_SMALL))
    report = count_parameters(small)
    width = small.adapter_cfg['hidden_dim']
    assert width < 64 and 0 < report.backbone_share <= DEFAULT_BUDGET
    assert any(
        'the default hidden_dim=64 would be' in n and 'fitting the width to 5%' in n
        for n in report.notes
    ), report.notes
    assert any(f'budget 5.00% of the backbone: hidden_dim={width}' in n for n in report.notes)
    assert any('fitting the width' in m for m in messages)
    assert all(a.proj.down.out_channels == width for a in small.adapters.values())


def test_a_given_width_is_kept_with_a_warning_above_five_percent():
    """hidden_dim=64 given builds exactly what it built before (keys and shapes),
    however large the share; above 5% the log and the report say so."""
    adapter = dict(type='mmslora.MSLoRAAdapter', hidden_dim=64, groups=8)
    with logged() as messages:
        model = build_in_scope('mmpretrain', wrap(MOBILENET_V3_SMALL, adapter=adapter))
    assert model.adapter_cfg == adapter
    assert all(a.proj.down.out_channels == 64 for a in model.adapters.values())
    share = count_parameters(model).backbone_share
    assert share > 0.05
    warning = (
        f"MSLoRAAdapter (set 'default') with hidden_dim=64 as given is {share:.3%} "
        f'of the backbone, above 5%; kept (drop hidden_dim to fit the width, or set '
        f'budget=0.05)'
    )
    assert warning in model.notes
    assert any(warning in m for m in messages)
    fitted = build_in_scope(
        'mmpretrain', wrap(MOBILENET_V3_SMALL, adapter=dict(type='mmslora.MSLoRAAdapter', groups=8))
    )
    assert set(fitted.state_dict()) == set(model.state_dict())  # same keys, narrower


def test_a_declared_layout_that_contradicts_the_block_is_refused():
    with pytest.raises(
        ValueError,
        match=r"blocks declares 'layer1.0' as 'nhwc', but its "
        r"output in a dry forward at \(128, 96\) has shape "
        r"\(2, 64, 32, 24\), which is 'nchw' \(the channels are dim 1\); "
        r"use layout='nchw'",
    ):
        MSLoRABackbone(backbone=RESNET18, blocks=dict(pattern=r'layer1\.0', layout='nhwc'))
    with pytest.raises(
        ValueError,
        match=r"declares 'layer1.0' as 'nlc', but its output .* "
        r"has shape \(2, 64, 32, 24\); use layout='nchw'",
    ):
        MSLoRABackbone(backbone=RESNET18, blocks=dict(pattern=r'layer1\.0', layout='nlc'))
    with pytest.raises(
        ValueError,
        match=r"declares 'layer1.0' with channels=32, but .* 64 "
        r"channels in layout 'nchw'; give channels=64 or leave channels out",
    ):
        MSLoRABackbone(
            backbone=RESNET18, blocks=dict(pattern=r'layer1\.0', layout='nchw', channels=32)
        )
    # what fits is accepted as before
    model = MSLoRABackbone(
        backbone=RESNET18, blocks=dict(pattern=r'layer1\.0', layout='nchw', channels=64)
    )
    assert model.block_layouts == {'layer1.0': 'nchw'}


def test_grid_from_must_name_a_module_and_be_used():
    vit = dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN)
    with pytest.raises(
        ValueError,
        match=r"grid_from='no_such_module' names no module of "
        r"VisionTransformer; give the module whose output is the patch "
        r"grid of 'tokens' blocks \(candidates: \['patch_embed', ",
    ):
        MSLoRABackbone(backbone=vit, grid_from='no_such_module')
    with logged() as messages:
        MSLoRABackbone(backbone=RESNET18, grid_from='conv1')
    assert (
        "MSLoRABackbone: grid_from='conv1' is not used: no adapted block has the layout "
        "'tokens' (layouts: ['nchw']); drop grid_from."
    ) in messages
    with logged() as messages:
        MSLoRABackbone(backbone=vit, grid_from='patch_embed.projection')
    assert not any('grid_from' in m for m in messages)


def test_without_a_width_a_backbone_too_small_for_any_width_gets_the_narrowest():
    """ShuffleNetV1's 16 blocks of up to 960 channels hold more than 5% of its
    parameters in adapters even at hidden_dim=1: built there, with a warning."""
    with logged() as messages:
        model = MSLoRABackbone(
            backbone=dict(type='mmpretrain.ShuffleNetV1', widen_factor=0.5, init_cfg=None)
        )
    assert model.adapter_cfg['hidden_dim'] == 1
    assert count_parameters(model).backbone_share > 0.05
    warning = next(n for n in model.notes if n.startswith('even hidden_dim=1 gives'))
    assert 'built at hidden_dim=1 (adapt fewer blocks with blocks=dict(' in warning
    assert any(warning in m for m in messages)
    with pytest.raises(
        ValueError,
        match=r'even hidden_dim=1 .*; raise the budget, or adapt '
        r'fewer blocks',
    ):
        MSLoRABackbone(
            backbone=dict(type='mmpretrain.ShuffleNetV1', widen_factor=0.5, init_cfg=None),
            budget=0.05,
        )


def test_a_set_named_grid_leaves_the_patch_grid_hook_alone():
    """The patch grid's hook is no adapter set: a set called 'grid' neither replaces nor
    keeps it, and removing the adapters removes it too."""
    torch.manual_seed(0)
    model = MSLoRABackbone(
        backbone=dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN)
    )
    perturb(model.adapters)
    x = torch.randn(1, 3, 64, 64)
    adapted = outputs(model, x)
    model.add_adapter('grid', dict(type='mmslora.MSLoRAAdapter'))
    model.set_adapter('grid')
    perturb(model.adapter_set('grid').modules)
    assert differ(outputs(model, x), adapted)
    model.delete_adapter('grid')
    assert not differ(outputs(model, x), adapted)  # the default set still finds its grid
    model.remove_adapters()
    assert not model.backbone.patch_embed._forward_hooks
    assert not any(m._forward_hooks for m in model.backbone.modules())


def test_adapters_of_is_a_deprecated_alias_of_adapter_set_modules():
    model = trained_resnet()
    with pytest.warns(
        DeprecationWarning,
        match=r'^MSLoRABackbone.adapters_of\(name\) moved to '
        r'MSLoRABackbone.adapter_set\(name\).modules; ',
    ) as record:
        modules = model.adapters_of('default')
    assert modules is model.adapter_set('default').modules is model.adapters
    assert record[0].filename == __file__  # the warning points at the caller


def test_a_merged_layer_adapter_is_skipped_by_its_hook():
    """A LayerAdapter whose ``merged`` is True is folded into its layer: the hook adds
    nothing (the layer's own output already holds the update)."""
    torch.manual_seed(0)
    model = MSLoRABackbone(
        backbone=RESNET18, adapter=dict(type='mmslora.LoRA', rank=2, targets=r'layer1\.0\.conv1')
    )
    with torch.no_grad():
        for param in model.adapters.parameters():
            param.normal_()
    x = torch.randn(1, 3, 32, 32)
    with model.disable_adapters():
        plain = outputs(model, x)
    assert differ(outputs(model, x), plain)
    model.adapters['layer1_0_conv1'].merged = True
    assert not differ(outputs(model, x), plain)
