"""Clear errors for the usual mistakes of adapter files and backbone configs, each
message asserted, and no half-loaded model left behind by a failed load."""
import re

import pytest
import torch
from mmengine.registry import DefaultScope

import mmslora  # noqa: F401
from mmslora.models import MSLoRABackbone, load_adapter, save_adapter
from mmslora.utils.checkpoint import DamagedCheckpointError
from mmslora.utils.state_dict import CheckpointMismatchError
from mmslora_testing import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures('one_thread')


def resnet_wrapper(depth=18, **adapter):
    torch.manual_seed(0)
    return MSLoRABackbone(
        backbone=dict(type='mmdet.ResNet', depth=depth, init_cfg=None),
        adapter=dict(type='mmslora.MSLoRAAdapter', **(adapter or dict(hidden_dim=8,
                                                                      groups=4))))


# --------------------------------------------------------------------------
# Adapter files for another model: load_adapter
# --------------------------------------------------------------------------
@pytest.fixture(scope='module')
def adapter_file(tmp_path_factory):
    """An adapter file of ResNet-18 with D=8, G=4 (its weights moved off their init)."""
    model = resnet_wrapper()
    with torch.no_grad():
        for param in model.adapters.parameters():
            param.add_(0.5)
    path = str(tmp_path_factory.mktemp('adapter') / 'adapter.pth')
    save_adapter(model, path)
    return path


def test_adapter_file_for_another_adapter_config(adapter_file):
    model = resnet_wrapper(hidden_dim=16, groups=4)
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_adapter(model, adapter_file)
    message = str(info.value)
    assert 'does not fit this model (nothing was loaded)' in message
    assert "missing keys [] (0 in all); unexpected keys [] (0 in all)" in message
    assert ('adapters.layer1_0.proj.down.weight: file (8, 16, 1, 1) vs model '
            '(16, 16, 1, 1)') in message
    assert 'Build the model from the config the adapters were trained with' in message
    assert "'hidden_dim': 8" in message  # what the file was made with
    assert isinstance(info.value, ValueError) and info.value.shapes
    assert_unchanged(model, before)


def test_adapter_file_for_another_backbone(adapter_file):
    model = resnet_wrapper(depth=34)  # 16 blocks instead of 8
    before = snapshot(model)
    with pytest.raises(CheckpointMismatchError,
                       match=r"missing keys \['adapters\.layer1_2\..*\(\d+ in all\)"):
        load_adapter(model, adapter_file)
    assert_unchanged(model, before)


def test_damaged_adapter_file_leaves_the_model_alone(adapter_file, tmp_path):
    truncated = tmp_path / 'truncated.pth'
    data = open(adapter_file, 'rb').read()
    truncated.write_bytes(data[:len(data) // 2])
    model = resnet_wrapper()
    before = snapshot(model)
    with pytest.raises(DamagedCheckpointError,
                       match=r"truncated\.pth' is damaged or incomplete: .*truncated or "
                             r'corrupted.*download it again'):
        load_adapter(model, str(truncated))
    assert_unchanged(model, before)


def test_full_checkpoint_is_not_an_adapter_file(tmp_path):
    model = resnet_wrapper()
    path = str(tmp_path / 'full.pth')
    torch.save(dict(state_dict=model.state_dict()), path)
    with pytest.raises(ValueError, match=r"not an mmslora adapter checkpoint \(no "
                                         r"meta\.format == 'mmslora-adapter-v1'\).*"
                                         r'tools/export_adapter\.py'):
        load_adapter(model, path)


# --------------------------------------------------------------------------
# Backbone types in the wrong scope
# --------------------------------------------------------------------------
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
