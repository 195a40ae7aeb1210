"""Parameter counting by module ownership (mmslora/models/params.py)."""

import torch.nn as nn

from mmslora.models import MSLoRABackbone, count_parameters
from mmslora_testing import RESNET18


def numel(module):
    return sum(p.numel() for p in module.parameters())


def test_counts_by_ownership_with_a_head_and_two_adapter_sets(capsys):
    wrapper = MSLoRABackbone(backbone=RESNET18)
    wrapper.add_adapter('task_b', dict(type='mmslora.BottleneckAdapter', hidden_dim=8))
    model = nn.Sequential(wrapper, nn.Linear(512, 10))
    report = count_parameters(model)
    adapters = numel(wrapper.adapters) + numel(wrapper.adapter_sets)
    assert report.backbone == numel(wrapper.backbone)
    assert report.adapter == adapters  # every set counts
    # only the active (default) set trains, and the head
    assert report.backbone_trainable == numel(wrapper.adapters)
    assert report.trainable == numel(wrapper.adapters) + numel(model[1])
    assert report.total == report.backbone + adapters + numel(model[1])
    assert abs(report.backbone_share - numel(wrapper.adapters) / report.backbone) < 1e-12
    wrapper.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'trainable params: {numel(wrapper.adapters):,d} || all params: ')
    assert 'trainable / backbone' in report.table()
