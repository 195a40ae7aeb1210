"""Adapter files (mmslora/models/adapter_io.py): safetensors + JSON written and read back
to equal outputs, in a fresh process too; one named set per file; the earlier .pth
format still loads; files for another model are refused before anything is copied."""

import json
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

from mmslora.models import MSLoRABackbone, load_adapter, save_adapter
from mmslora.models.adapter_io import CONFIG_NAME, FORMAT, LEGACY_FORMAT, WEIGHTS_NAME
from mmslora.utils.checkpoint import DamagedCheckpointError
from mmslora.utils.state_dict import CheckpointMismatchError
from mmslora_testing import ROOT, assert_same_outputs, assert_unchanged, snapshot

SMALL = dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4)


def resnet_wrapper(depth=18, seed=0, **adapter):
    torch.manual_seed(seed)
    return MSLoRABackbone(
        backbone=dict(type='mmdet.ResNet', depth=depth, init_cfg=None),
        adapter=dict(SMALL, **adapter),
    )


def moved(model, set_name=None, by=0.5):
    with torch.no_grad():
        for param in model.adapter_set(set_name).modules.parameters():
            param.add_(by)
    return model


@pytest.fixture(scope='module')
def adapter_dir(tmp_path_factory):
    """The adapter files of ResNet-18 with D=8, G=4 (its weights moved off their init)."""
    path = str(tmp_path_factory.mktemp('adapter') / 'resnet18')
    save_adapter(moved(resnet_wrapper()), path, extra_meta=dict(config='r18.py'))
    return path


def test_writes_safetensors_and_a_json_config(adapter_dir):
    assert sorted(
        p
        for p in ('adapter_model.safetensors', 'adapter_config.json')
        if osp.isfile(osp.join(adapter_dir, p))
    ) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    with open(osp.join(adapter_dir, WEIGHTS_NAME), 'rb') as f:
        header_size = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(header_size))  # safetensors: a JSON header, raw tensors
    assert header['__metadata__'] == dict(format=FORMAT)
    assert 'adapters.layer1_0.proj.up.weight' in header
    assert not any(k.startswith('backbone.') for k in header)  # the frozen backbone stays out
    with open(osp.join(adapter_dir, CONFIG_NAME)) as f:
        config = json.load(f)
    wrapper = config['wrappers']['<root>']
    assert config['format'] == FORMAT and config['mmslora_version'] and config['torch_version']
    assert wrapper['backbone'] == 'ResNet' and wrapper['adapter'] == SMALL
    assert wrapper['sets']['default']['blocks']['layer1.0'] == 'nchw'
    assert config['config'] == 'r18.py'


def test_a_fresh_process_loads_the_files_to_equal_outputs(adapter_dir, tmp_path):
    model = moved(resnet_wrapper())
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.save([t.clone() for t in model(x)], tmp_path / 'want.pt')
    torch.save(x, tmp_path / 'x.pt')
    script = textwrap.dedent(f'''
        import torch
        from mmslora.models import MSLoRABackbone, load_adapter
        torch.manual_seed(0)  # the same random 'pretrained' backbone as the writer's
        model = MSLoRABackbone(backbone=dict(type='mmdet.ResNet', depth=18, init_cfg=None),
                               adapter={SMALL!r})
        load_adapter(model, {adapter_dir!r})
        model.eval()
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        want = torch.load({str(tmp_path / 'want.pt')!r}, weights_only=True)
        with torch.no_grad():
            got = model(x)
        # to float rounding: with the frozen fast path's folded BNs the convolutions
        # carry a bias, and a process with another thread count may sum it differently
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, want)), \
            'outputs differ'
        print('EQUAL', len(want))
    ''')
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'EQUAL 4' in result.stdout


def test_the_earlier_pth_format_still_loads(tmp_path):
    model = moved(resnet_wrapper())
    path = str(tmp_path / 'adapter.pth')
    with pytest.warns(DeprecationWarning, match='deprecated pickle-based format'):
        save_adapter(model, path)
    assert torch.load(path, weights_only=True)['meta']['format'] == LEGACY_FORMAT
    fresh = resnet_wrapper()
    meta = load_adapter(fresh, path)
    assert meta['format'] == LEGACY_FORMAT
    assert_same_outputs(fresh, model, torch.randn(1, 3, 32, 32))


def test_one_named_set_per_file_loads_into_a_fresh_wrapper(tmp_path):
    model = resnet_wrapper()
    model.add_adapter('task_b', dict(type='mmslora.MSLoRAAdapter', hidden_dim=16))
    moved(model, 'task_b', by=0.1)
    model.set_adapter('task_b')
    path = str(tmp_path / 'task_b')
    meta = save_adapter(model, path, adapter_name='task_b')
    assert meta['adapter_name'] == 'task_b'

    fresh = resnet_wrapper()  # has only the default set
    load_adapter(fresh, path)
    assert fresh.adapter_names == ['default', 'task_b']
    fresh.set_adapter('task_b')
    assert_same_outputs(fresh, model, torch.randn(1, 3, 32, 32))
    load_adapter(fresh, path, adapter_name='copy')  # the same set under another name
    fresh.set_adapter('copy')
    assert_same_outputs(fresh, model, torch.randn(1, 3, 32, 32))


def test_a_whole_model_file_brings_its_named_sets(tmp_path):
    model = resnet_wrapper()
    model.add_adapter('lora', dict(type='mmslora.LoRA', rank=2))
    moved(model, 'lora', by=0.01)
    save_adapter(model, str(tmp_path / 'all'))
    fresh = resnet_wrapper(seed=1)
    fresh.backbone.load_state_dict(model.backbone.state_dict())
    load_adapter(fresh, str(tmp_path / 'all'))
    for name in ('default', 'lora'):
        model.set_adapter(name)
        fresh.set_adapter(name)
        assert_same_outputs(fresh, model, torch.randn(1, 3, 32, 32))


def test_file_for_another_adapter_config(adapter_dir):
    model = resnet_wrapper(hidden_dim=16, groups=4)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_adapter(model, adapter_dir)
    assert info.value.missing == [] and info.value.unexpected == []
    assert (
        'adapters.layer1_0.proj.down.weight: file (8, 16, 1, 1) vs model (16, 16, 1, 1)'
    ) in info.value.shapes
    assert 'Build the model from the config the adapters were trained with' in str(info.value)
    assert_unchanged(model, before)


def test_file_for_another_backbone(adapter_dir):
    model = resnet_wrapper(depth=34)  # 16 blocks instead of 8
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_adapter(model, adapter_dir)
    assert 'adapters.layer1_2.proj.up.weight' in info.value.missing
    assert_unchanged(model, before)


@pytest.mark.parametrize('damage', ['truncated weights', 'garbled config'])
def test_damaged_files_leave_the_model_alone(adapter_dir, tmp_path, damage):
    broken = tmp_path / 'broken'
    broken.mkdir()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        data = open(osp.join(adapter_dir, name), 'rb').read()
        if (name == WEIGHTS_NAME) == (damage == 'truncated weights'):
            data = data[: len(data) // 2]
        (broken / name).write_bytes(data)
    model = resnet_wrapper()
    before = snapshot(model)
    with pytest.raises(DamagedCheckpointError) as info:
        load_adapter(model, str(broken))
    assert info.value.filename == str(broken) and 'Export it again' in str(info.value)
    assert_unchanged(model, before)


def test_damaged_pth_file_leaves_the_model_alone(tmp_path):
    model = moved(resnet_wrapper())
    path = tmp_path / 'adapter.pth'
    with pytest.warns(DeprecationWarning):
        save_adapter(model, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = snapshot(model)
    with pytest.raises(DamagedCheckpointError) as info:
        load_adapter(model, str(path))
    assert info.value.filename == str(path)
    assert_unchanged(model, before)


def test_missing_files_and_other_checkpoints_are_named(tmp_path):
    model = resnet_wrapper()
    with pytest.raises(FileNotFoundError, match=f'{CONFIG_NAME} is missing'):
        load_adapter(model, str(tmp_path))
    path = str(tmp_path / 'full.pth')
    torch.save(dict(state_dict=model.state_dict()), path)
    with pytest.raises(
        ValueError,
        match=r'not an mmslora adapter file.*'
        r'tools/export_adapter\.py',
    ):
        load_adapter(model, path)


def test_set_file_and_whole_model_file_are_not_confused(adapter_dir):
    with pytest.raises(ValueError, match='holds a whole model, not one adapter set'):
        load_adapter(resnet_wrapper(), adapter_dir, adapter_name='task_b')


def test_a_set_file_rebuilds_the_width_it_was_trained_with(tmp_path):
    """The set's config in the file records the width built (here fitted to 5% of a
    small backbone), so a fresh wrapper rebuilds that width; a file written before
    widths were recorded (no hidden_dim: the class default, 64) rebuilds 64."""
    mobilenet = dict(type='mmpretrain.MobileNetV3', arch='small', init_cfg=None)

    def wrapper(**adapter):
        torch.manual_seed(0)
        return MSLoRABackbone(backbone=mobilenet, adapter=dict(SMALL, **adapter))

    model = wrapper()
    model.add_adapter('fitted', dict(type='mmslora.MSLoRAAdapter'))
    model.add_adapter('earlier', dict(type='mmslora.MSLoRAAdapter', hidden_dim=64))
    width = model.adapter_set('fitted').cfg['hidden_dim']
    assert width < 64
    for name in ('fitted', 'earlier'):
        moved(model, name, by=0.01)
        save_adapter(model, str(tmp_path / name), adapter_name=name)
    with open(tmp_path / 'earlier' / CONFIG_NAME) as f:
        meta = json.load(f)
    del meta['wrappers']['<root>']['sets']['earlier']['adapter']['hidden_dim']
    with open(tmp_path / 'earlier' / CONFIG_NAME, 'w') as f:
        json.dump(meta, f)

    fresh = wrapper()
    for name, built in (('fitted', width), ('earlier', 64)):
        load_adapter(fresh, str(tmp_path / name))
        assert all(
            a.proj.down.out_channels == built for a in fresh.adapter_set(name).modules.values()
        )
        fresh.set_adapter(name)
        model.set_adapter(name)
        assert_same_outputs(fresh, model, torch.randn(1, 3, 64, 64))
