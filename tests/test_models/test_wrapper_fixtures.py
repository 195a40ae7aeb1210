"""Checkpoints and adapter files written by mmslora 0.1.0 (tests/data/wrapper_0.1.0, made
by tests/data/make_wrapper_fixtures.py on torch 2.14.1) load into today's wrapper with the
same keys and tensors and give the same outputs (up to the float rounding of another
torch version)."""

import importlib.util
import os.path as osp

import pytest
import torch
from safetensors.torch import load_file

from mmslora.models import MSLoRABackbone, load_adapter

DATA = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data')
FIXTURES = osp.join(DATA, 'wrapper_0.1.0')
_spec = importlib.util.spec_from_file_location(
    'make_wrapper_fixtures', osp.join(DATA, 'make_wrapper_fixtures.py')
)
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


def fixture(name):
    return load_file(osp.join(FIXTURES, name))


def assert_outputs(model, io):
    with torch.no_grad():
        for set_name in ('default', 'task_b'):
            model.set_adapter(set_name)
            torch.testing.assert_close(
                model(io['x'])[0],
                io[set_name],
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, set_name=set_name: f'set {set_name}: {m}',
            )


@pytest.mark.parametrize('name', sorted(make.MODELS))
def test_an_old_checkpoint_loads_with_the_same_keys_and_outputs(name):
    state = fixture(f'{name}_checkpoint.safetensors')
    model = make.build(name)
    assert sorted(model.state_dict()) == sorted(state)
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert_outputs(model, fixture(f'{name}_io.safetensors'))


def with_old_backbone(model, name):
    state = fixture(f'{name}_checkpoint.safetensors')
    model.backbone.load_state_dict(
        {k[len('backbone.') :]: v for k, v in state.items() if k.startswith('backbone.')},
        strict=True,
    )
    return model


@pytest.mark.parametrize('name', sorted(make.MODELS))
def test_old_whole_model_adapter_files_load(name):
    model = with_old_backbone(make.build(name), name)
    load_adapter(model, osp.join(FIXTURES, f'{name}_adapters'))
    assert_outputs(model, fixture(f'{name}_io.safetensors'))


def test_old_single_set_adapter_files_build_and_load_their_sets():
    backbone, adapter, _, _ = make.MODELS['resnet']
    model = with_old_backbone(MSLoRABackbone(backbone=backbone, adapter=adapter), 'resnet')
    load_adapter(model, osp.join(FIXTURES, 'resnet_mslora'))
    load_adapter(model, osp.join(FIXTURES, 'resnet_lora'))  # builds the LoRA set task_b
    assert model.adapter_names == ['default', 'task_b']
    assert model.adapter_set('task_b').layers == ['layer1.0.conv1', 'layer1.0.conv2']
    assert_outputs(model.eval(), fixture('resnet_io.safetensors'))
