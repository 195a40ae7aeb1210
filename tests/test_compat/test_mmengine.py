"""mmslora.compat.mmengine: every private mmengine attribute mmslora uses is there,
and an accessor whose attribute is gone says so instead of turning a feature off."""

import types

import mmengine
import pytest
from mmengine.config import Config
from mmengine.runner import IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import CheckpointLoader

from mmslora.compat import mmengine as compat


def test_every_private_attribute_is_there():
    missing = compat.check_private_api()
    assert not missing, (
        f'mmengine {mmengine.__version__} lacks private attributes mmslora uses: '
        f'{missing}; update mmslora/compat/mmengine.py (written for mmengine '
        f'{compat.WRITTEN_FOR}, tested with {compat.TESTED_WITH})'
    )


def test_the_installed_mmengine_is_of_the_series_written_for():
    assert mmengine.__version__.startswith(compat.WRITTEN_FOR.rstrip('x'))


def test_the_list_names_every_attribute_once():
    paths = [a.path for a in compat.PRIVATE_API]
    assert len(paths) == len(set(paths))
    assert set(compat.PRIVATE_ATTRIBUTE_NAMES) == {
        '_schemes',
        '_get_mmengine_home',
        '_process_mmcls_checkpoint',
        '_resume',
        '_load_from',
        '_randomness_cfg',
        'dataloader_iterator',
        '_get_cfg_path',
    }


def test_a_missing_attribute_is_named(monkeypatch):
    monkeypatch.delattr(CheckpointLoader, '_schemes')
    assert compat.check_private_api() == ['mmengine.runner.checkpoint.CheckpointLoader._schemes']
    with pytest.raises(compat.PrivateAPIError) as info:
        compat.checkpoint_schemes()
    assert info.value.attribute == 'mmengine.runner.checkpoint.CheckpointLoader._schemes'
    assert info.value.mmengine_version == mmengine.__version__
    assert isinstance(info.value, RuntimeError)


def test_an_instance_attribute_mmengine_no_longer_sets_is_named(monkeypatch):
    def init(self, *args, **kwargs):  # a Runner.__init__ that no longer names _resume
        self._load_from = self._randomness_cfg = None

    monkeypatch.setattr(Runner, '__init__', init)
    assert compat.check_private_api() == ['mmengine.runner.Runner._resume']


def test_runner_accessors():
    runner = types.SimpleNamespace(_resume='auto', _load_from='a.pth', _randomness_cfg=dict(seed=0))
    assert compat.runner_is_resuming(runner) is True
    assert compat.runner_load_from(runner) == 'a.pth'
    assert compat.runner_randomness_cfg(runner) == dict(seed=0)
    with pytest.raises(compat.PrivateAPIError) as info:
        compat.runner_is_resuming(types.SimpleNamespace())
    assert info.value.attribute == 'types.SimpleNamespace._resume'


def test_loop_iterator_is_only_replaced_where_run_reads_it():
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)
    with pytest.raises(compat.PrivateAPIError):
        compat.set_loop_dataloader_iterator(loop, iter([]))
    assert 'dataloader_iterator' not in vars(loop)
    loop.dataloader_iterator = first = iter([1])
    assert compat.loop_dataloader_iterator(loop) is first
    second = iter([2])
    compat.set_loop_dataloader_iterator(loop, second)
    assert compat.loop_dataloader_iterator(loop) is second


def test_checkpoint_helpers(tmp_path, monkeypatch):
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'home'))
    assert compat.mmengine_home() == str(tmp_path / 'home')
    assert (tmp_path / 'home').is_dir()
    converted = compat.process_mmcls_checkpoint(
        {'state_dict': {'backbone.conv.weight': 1, 'head.fc.weight': 2}}
    )
    assert dict(converted['state_dict']) == {'conv.weight': 1}


def test_registered_config_names_resolve_without_a_scope(monkeypatch, tmp_path):
    get_cfg_path = Config._get_cfg_path  # import mmslora registered 'mmslora'
    monkeypatch.setattr(get_cfg_path, 'resolvers', dict(get_cfg_path.resolvers))
    compat.register_config_package('probe', lambda name: str(tmp_path / name))
    assert Config._get_cfg_path is get_cfg_path  # one wrapper, whatever registers
    assert Config._get_cfg_path('probe::a/b.py', 'cfg.py') == (str(tmp_path / 'a/b.py'), None)
    path, scope = Config._get_cfg_path('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 'c.py')
    assert scope == 'mmdet' and path.endswith('retinanet_r18_fpn_1x_coco.py')  # mmengine's
    assert Config._get_cfg_path('../x.py', '/a/b/c.py') == ('/a/b/../x.py', None)


def test_a_missing_config_path_function_is_named(monkeypatch):
    monkeypatch.delattr(Config, '_get_cfg_path')
    with pytest.raises(compat.PrivateAPIError) as info:
        compat.register_config_package('probe', str)
    assert info.value.attribute == 'mmengine.config.Config._get_cfg_path'
