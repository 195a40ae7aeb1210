"""What each adapter does to its block's map (mmslora/models/reweighting.py)."""

import pytest
import torch

from mmslora.models import MSLoRABackbone, record_reweighting
from mmslora.models.reweighting import last_block_per_stage
from mmslora_testing import RESNET18


def test_records_norms_and_the_gate_of_the_active_set():
    torch.manual_seed(0)
    model = MSLoRABackbone(
        backbone=RESNET18, adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4)
    )
    model.add_adapter('plain', dict(type='mmslora.BottleneckAdapter', hidden_dim=8))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), record_reweighting(model) as records:
        model(x)
    assert list(records) == list(model.block_layouts)
    first = records['layer1.0']
    assert first['before'].shape == first['after'].shape == first['gate'].shape == (8, 8)
    assert torch.equal(first['before'], first['after'])  # zero start: F + H(F) = F
    assert ((first['gate'] > 0) & (first['gate'] < 1)).all()  # a sigmoid gate
    model.set_adapter('plain')
    with torch.no_grad(), record_reweighting(model) as records:
        model(x)
    assert 'gate' not in records['layer1.0']  # the bottleneck adapter has no gate
    assert last_block_per_stage(records) == ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']


def test_a_model_without_block_adapters_is_named():
    model = MSLoRABackbone(backbone=RESNET18, adapter=None)
    with pytest.raises(ValueError, match='no MSLoRABackbone block adapters'):
        with record_reweighting(model):
            pass
