"""Merging layer adapters into the backbone's weights (mmslora/models/merging.py, the
wrapper's merge_adapters / unmerge_adapters) and the plain upstream state dict."""

import copy

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmslora.models import AdapterSet, LayerAdapter, merging
from mmslora.models.frozen_path.folding import folds_in
from mmslora_testing import PEER_BACKBONES, TINY_VIT_MMSEG, build_in_scope, build_method, flat, wrap

MMSEG_VIT = dict(type='mmseg.VisionTransformer', **TINY_VIT_MMSEG)
RESNET18_NARROW = dict(PEER_BACKBONES[0][2], base_channels=16)  # 1/16 of the weights
# conv layers (ResNet-18), linear layers (mmpretrain ViT), nn.MultiheadAttention (mmseg
# ViT: its projections are skipped, the FFN linears are adapted)
CASES = [('mmdet', RESNET18_NARROW), ('mmpretrain', PEER_BACKBONES[1][2]), ('mmseg', MMSEG_VIT)]


def trained_lora(scope, cfg, **overrides):
    """A LoRA wrapper whose B matrices are away from zero, as after training."""
    model = build_method('lora', scope, cfg, adapter=dict(rank=4), **overrides)
    for adapter in model.adapters.values():
        nn.init.normal_(adapter.lora_B.weight, std=0.05)
    return model.eval()


def outputs(model, x):
    with torch.no_grad():
        return flat(model(x))


def assert_close_outputs(got, want):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def backbone_weights(model):
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize('scope,cfg', CASES, ids=['conv', 'linear', 'mha'])
def test_merge_equals_adapted_model_and_unmerge_is_bitwise(scope, cfg):
    model = trained_lora(scope, cfg)
    x = torch.randn(2, 3, 64, 64)
    adapted, before = outputs(model, x), backbone_weights(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with model.disable_adapters():
        frozen = outputs(model, x)
    assert (adapted[-1] - frozen[-1]).abs().max() > 1e-3  # the LoRA changes the output

    assert model.merge_adapters() == model.layer_names
    assert model.merged_adapter == 'default'
    assert all(a.merged for a in model.adapters.values())
    assert_close_outputs(outputs(model, x), adapted)
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f'{name}.weight' for name in model.layer_names}
    if scope == 'mmseg':  # nn.MultiheadAttention's projections: skipped, untouched
        assert not any('attn.attn' in k for k in changed)
    # the wrapper's state dict stays the unmerged one: a checkpoint saved now loads anywhere
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    assert model.unmerge_adapters() == model.layer_names
    assert model.merged_adapter is None and not any(a.merged for a in model.adapters.values())
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, x), adapted))


def test_unmerge_without_originals_is_exact_to_rounding():
    model = trained_lora(*CASES[1])
    before = backbone_weights(model)
    model.merge_adapters(keep_original=False)
    model.unmerge_adapters()  # (W + dW) - dW: float rounding, no copy kept
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)


def test_merge_refusals_and_guards():
    model = trained_lora(*CASES[0])
    with pytest.raises(RuntimeError, match='no adapter set is merged; nothing to unmerge'):
        model.unmerge_adapters()
    model.add_adapter('b', dict(type='mmslora.LoRA', rank=2))
    with pytest.raises(ValueError, match=r"set 'b' is not the active set .* set_adapter\('b'\)"):
        model.merge_adapters('b')
    model.merge_adapters()
    with pytest.raises(RuntimeError, match="set 'default' is merged already"):
        model.merge_adapters()
    for action in (lambda: model.set_adapter('b'), model.disable_adapters().__enter__):
        with pytest.raises(
            RuntimeError,
            match=r"adapter set 'default' is merged .* "
            r'unmerge_adapters\(\) first',
        ):
            action()
    model.set_adapter('default')  # the merged set itself: nothing changes
    model.unmerge_adapters()
    model.set_adapter('b')
    model.merge_adapters()
    with pytest.raises(RuntimeError, match=r"delete_adapter\('b'\) while adapter set 'b'"):
        model.delete_adapter('b')


@pytest.mark.parametrize(
    'method,cls',
    [('mslora', 'MSLoRAAdapter'), ('mona', 'MonaAdapter'), ('adapter', 'BottleneckAdapter')],
)
def test_block_adapters_stay_modules(method, cls):
    model = build_method(method, *CASES[0])
    with pytest.raises(
        ValueError,
        match=f"holds {cls} block adapters: MSLoRA/Mona/Adapter "
        "reweight a block's output nonlinearly and stay "
        'modules; export them with mmslora-export-adapter',
    ):
        model.merge_adapters()
    with pytest.raises(ValueError, match='stay modules'):
        merging.upstream_state_dict(model)


def test_safe_merge_refuses_non_finite_weights_and_merges_nothing():
    model = trained_lora(*CASES[0])
    before = backbone_weights(model)
    with torch.no_grad():
        model.adapters['layer1_0_conv1'].lora_B.weight[0, 0] = float('inf')
    with pytest.raises(ValueError, match=r"non-finite weights in \['layer1.0.conv1'\]"):
        model.merge_adapters()
    assert model.merged_adapter is None
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())


def test_merge_under_autograd_with_trainable_weights():
    model = trained_lora(*CASES[1], freeze=False)  # the weights train too
    layer = dict(model.backbone.named_modules())[model.layer_names[0]]
    with torch.enable_grad():
        model.merge_adapters()
    assert layer.weight.is_leaf and layer.weight.grad_fn is None and layer.weight.requires_grad
    model.train()
    flat(model(torch.randn(1, 3, 64, 64)))[-1].sum().backward()
    assert layer.weight.grad is not None  # the merged weight trains on
    assert all(p.grad is None for p in model.adapters.parameters())  # the adapters not
    merged = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight -= 0.1 * layer.weight.grad  # an optimizer step while merged
    delta = model.adapters[model.layer_names[0].replace('.', '_')].delta_weight().detach()
    model.unmerge_adapters()  # the trained weight minus the update, not the old original
    torch.testing.assert_close(layer.weight.detach(), merged - 0.1 * layer.weight.grad - delta)


def test_merge_recomputes_the_fast_paths_folded_weights():
    model = trained_lora(*CASES[0])  # fast path on: BNs fold into their convolutions
    x = torch.randn(2, 3, 64, 64)
    adapted = outputs(model, x)
    with model.disable_adapters():
        frozen = outputs(model, x)
    model.remove_adapters()  # no hooks: the adapted convolutions fold their BN now
    assert_close_outputs(outputs(model, x), frozen)
    folds = [f for f in folds_in(model.backbone) if f.conv is model.backbone.conv1]
    assert folds and folds[0].cache is not None  # folded weights kept from that forward
    model.merge_adapters()
    assert_close_outputs(outputs(model, x), adapted)  # not the cached, unmerged fold
    model.unmerge_adapters()
    assert_close_outputs(outputs(model, x), frozen)


def test_upstream_state_dict_loads_into_the_plain_backbone():
    model = trained_lora(*CASES[0])
    x = torch.randn(1, 3, 64, 64)
    adapted = outputs(model, x)
    with pytest.raises(ValueError, match="adapter set 'default' is not merged"):
        merging.upstream_state_dict(model)
    model.merge_adapters()
    plain = build_in_scope(*CASES[0])
    state = merging.upstream_state_dict(model)
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state, strict=True)
    plain.eval()
    assert_close_outputs(outputs(plain, x), adapted)
    probe = build_method('linear_probe', *CASES[0])  # no adapters: nothing to merge
    assert merging.upstream_state_dict(probe).keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match='has no adapters .* nothing to merge'):
        probe.merge_adapters()


def test_merged_wrapper_deep_copies_with_its_own_record():
    model = trained_lora(*CASES[1])
    before = backbone_weights(model)
    model.merge_adapters()
    twin = copy.deepcopy(model)
    assert twin.merged_adapter == 'default'
    twin.unmerge_adapters()
    assert all(torch.equal(v, before[k]) for k, v in twin.backbone.state_dict().items())
    assert not twin._state_dict_hooks and model._state_dict_hooks  # each its own hook
    assert model.merged_adapter == 'default'  # the original is still merged


def test_upstream_config_replaces_the_wrapper():
    cfg = Config(
        dict(
            model=dict(
                type='RetinaNet',
                backbone=wrap(dict(type='ResNet', depth=18), adapter=dict(type='mmslora.LoRA')),
            ),
            custom_imports=dict(imports=['mmslora', 'my_pkg']),
            optim_wrapper=dict(constructor='mmslora.TrainableOptimWrapperConstructor'),
            custom_hooks=[dict(type='mmslora.TrainableParamsReportHook'), dict(type='EMAHook')],
            mslora_backbone=wrap(dict(type='ResNet')),
        )
    )
    plain, leftovers = merging.upstream_config(cfg)
    assert plain.model.backbone == dict(type='ResNet', depth=18)
    assert plain.custom_imports.imports == ['my_pkg'] and 'constructor' not in plain.optim_wrapper
    assert plain.custom_hooks == [dict(type='EMAHook')] and 'mslora_backbone' not in plain
    assert leftovers == [] and cfg.model.backbone.type == 'mmslora.MSLoRABackbone'
    own = Config(dict(model=dict(backbone=wrap(dict(type='mmslora.EfficientNetLite')))))
    assert merging.upstream_config(own)[1] == ['model.backbone.type']


class _NonlinearUpdate(LayerAdapter):
    """A layer adapter without delta_weight (its update is not a weight)."""

    @classmethod
    def from_layer(cls, layer, **kwargs):
        return cls()

    def forward(self, x):
        return torch.tanh(x)


def test_layer_adapters_without_delta_weight_cannot_merge():
    from mmslora.models.peers import LoRA

    assert LoRA.can_merge() and not _NonlinearUpdate.can_merge()
    adapter_set = AdapterSet(
        'tanh', None, nn.ModuleDict(dict(fc=_NonlinearUpdate())), layers=['fc']
    )
    assert merging.unmergeable_reason(adapter_set) == (
        "adapter set 'tanh' holds _NonlinearUpdate layer adapters, which have no "
        'delta_weight(): their update is not a weight to add'
    )
