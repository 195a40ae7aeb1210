"""The adapter contract (mmslora/models/base.py): a user's own adapter works in the
wrapper with no other code, a class that implements neither base is refused, and the
zero start survives any init_cfg."""

import pytest
import torch
import torch.nn as nn

from mmslora.models import BlockAdapter, LayerAdapter, MSLoRAAdapter, MSLoRABackbone, find_wrappers
from mmslora.models.peers import BottleneckAdapter, MonaAdapter
from mmslora.registry import MODELS
from mmslora_testing import RESNET18, TINY_VIT_MMPRETRAIN, assert_same_outputs, flat, wrap


@MODELS.register_module(force=True)
class ScaledChannelAdapter(BlockAdapter):
    """The README's example of a user's own adapter: ``F + s * Conv1x1(F)``."""

    zero_init = ('scale',)

    def __init__(self, channels, init_cfg=None):
        super().__init__(channels, init_cfg=init_cfg)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.scale = nn.Parameter(torch.zeros(channels, 1, 1))

    def residual(self, x):
        return self.scale * self.mix(x)


@MODELS.register_module(force=True)
class BiasShift(LayerAdapter):
    """A layer adapter: a learned shift of a Linear layer's output."""

    layer_types = (nn.Linear,)
    zero_init = ('shift',)

    def __init__(self, out_features, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.shift = nn.Parameter(torch.zeros(out_features))

    @classmethod
    def from_layer(cls, layer, **kwargs):
        return cls(layer.out_features, **kwargs)

    def forward(self, x):
        return self.shift.expand(*x.shape[:-1], -1)


@MODELS.register_module(force=True)
class DuckTypedAdapter(nn.Module):
    """Looks like an adapter but derives from neither base."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x


def train_steps(model, x, steps=2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        sum(t.pow(2).mean() for t in flat(model(x))).backward()
        opt.step()


@pytest.mark.parametrize(
    'adapter, backbone',
    [
        (dict(type='ScaledChannelAdapter'), RESNET18),
        (dict(type='BiasShift'), dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN)),
    ],
    ids=['block', 'layer'],
)
def test_user_adapter_registered_in_models_works_in_the_wrapper(adapter, backbone):
    torch.manual_seed(0)
    model = MODELS.build(wrap(backbone, adapter=dict(adapter, type=f"mmslora.{adapter['type']}")))
    model.init_weights()
    plain = MODELS.build(backbone)
    plain.load_state_dict(model.backbone.state_dict())
    plain.requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    assert_same_outputs(model, plain, x)  # exact at the zero start
    assert len(model.adapters) > 0 and find_wrappers(model) == {'': model}
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_steps(model, x)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    model.eval()
    with torch.no_grad():
        assert any(not torch.equal(a, b) for a, b in zip(flat(model(x)), flat(plain(x))))


def test_adapter_implementing_neither_base_is_refused():
    with pytest.raises(TypeError, match='implements neither.*BlockAdapter.*LayerAdapter'):
        MSLoRABackbone(backbone=RESNET18, adapter=dict(type='mmslora.DuckTypedAdapter'))


def test_block_adapter_base_checks_its_input():
    adapter = ScaledChannelAdapter(8)
    with pytest.raises(ValueError, match=r'ScaledChannelAdapter expects a \(B, 8, H, W\)'):
        adapter(torch.randn(1, 4, 2, 2))
    assert adapter.residual_and_gate(torch.randn(1, 8, 2, 2))[1] is None
    with pytest.raises(ValueError, match='channels must be a positive int'):
        ScaledChannelAdapter(0)


@pytest.mark.parametrize('cls', [MSLoRAAdapter, BottleneckAdapter, MonaAdapter])
def test_every_block_adapter_names_a_wrong_input(cls):
    with pytest.raises(ValueError, match=rf'{cls.__name__} expects a \(B, 16, H, W\) feature'):
        cls(channels=16)(torch.randn(1, 8, 4, 4))


def test_layer_adapter_without_a_linear_update_says_it_cannot_merge():
    with pytest.raises(NotImplementedError, match='cannot be merged'):
        BiasShift(4).delta_weight()


METHOD_ADAPTERS = [
    dict(type='mmslora.MSLoRAAdapter', hidden_dim=16),
    dict(type='mmslora.BottleneckAdapter', hidden_dim=16),
    dict(type='mmslora.MonaAdapter', hidden_dim=16, dropout=0.0),
    dict(type='mmslora.LoRA', rank=4),
]
INIT_CFGS = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Normal', layer=['Conv2d', 'Linear'], std=0.5, bias=0.3),
]


@pytest.mark.parametrize('init_cfg', INIT_CFGS, ids=['kaiming', 'normal'])
@pytest.mark.parametrize('adapter', METHOD_ADAPTERS, ids=lambda a: a['type'].split('.')[1])
def test_zero_start_survives_any_init_cfg(adapter, init_cfg):
    torch.manual_seed(0)
    model = MSLoRABackbone(backbone=RESNET18, adapter=dict(adapter, init_cfg=init_cfg))
    model.init_weights()
    plain = MODELS.build(RESNET18)
    plain.load_state_dict(model.backbone.state_dict())
    assert_same_outputs(model, plain, torch.randn(1, 3, 32, 32))
    # the init_cfg did run on the other layers
    first = next(iter(model.adapters.values()))
    assert first.is_init


def test_pretrained_init_cfg_of_an_adapter_is_not_reset(tmp_path):
    adapter = ScaledChannelAdapter(4)
    with torch.no_grad():
        adapter.scale.fill_(0.5)
    path = str(tmp_path / 'adapter.pth')
    torch.save(adapter.state_dict(), path)
    loaded = ScaledChannelAdapter(4, init_cfg=dict(type='Pretrained', checkpoint=path))
    loaded.init_weights()
    assert torch.equal(loaded.scale, adapter.scale)


def test_second_init_weights_keeps_trained_weights():
    adapter = ScaledChannelAdapter(4)
    adapter.init_weights()
    with torch.no_grad():
        adapter.scale.fill_(0.5)
    adapter.init_weights()  # MMEngine: a second call changes nothing
    assert torch.all(adapter.scale == 0.5)
