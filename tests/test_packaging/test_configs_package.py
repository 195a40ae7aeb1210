"""mmslora's configs by name: ``_base_ = 'mmslora::...'`` after ``import mmslora``, from
a folder that is not the repository, read exactly as the same file given by its path;
the package's OpenMMLab layout (``mmslora/.mim``); ``python -m mmslora SCRIPT``."""

import glob
import os.path as osp
import sys

import mmengine
import pytest
from mmengine.config import Config

import mmslora
from mmslora.cli import run_script
from mmslora.utils.config import (
    CONFIG_ROOT,
    build_model_from_config,
    resolve_config,
    shipped_config,
    shipped_configs,
)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MASK_RCNN = 'mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py'
#: a user's config: an upstream detector, the MSLoRA base by name, a small R-18
USER_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 'mmslora::_base_/mslora.py']
model = dict(backbone=dict(_base_.mslora_backbone,
                           backbone=dict(_base_.model.backbone, init_cfg=None)))
optim_wrapper = _base_.mslora_optim_wrapper
"""


def load_string(text, tmp_path, monkeypatch):
    """``text`` as a config file in ``tmp_path``, loaded with ``tmp_path`` as the
    working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'user_config.py').write_text(text)
    return Config.fromfile('user_config.py')


def test_the_package_sees_the_repository_configs():
    assert osp.samefile(CONFIG_ROOT, osp.join(ROOT, 'configs'))
    assert osp.samefile(osp.join(mmslora.__path__[0], '.mim', 'tools'), osp.join(ROOT, 'tools'))
    assert osp.isfile(osp.join(mmslora.__path__[0], '.mim', 'model-index.yml'))
    names = shipped_configs()
    assert '_base_/mslora.py' in names and MASK_RCNN in names
    assert len(names) == len(glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))


def test_the_model_index_lists_every_shipped_config():
    index = mmengine.load(osp.join(ROOT, 'model-index.yml'))
    listed = [
        m['Config']
        for path in index['Import']
        for m in mmengine.load(osp.join(ROOT, path))['Models']
    ]
    assert sorted(listed) == sorted(
        'configs/' + c for c in shipped_configs() if not c.startswith('_base_/')
    )


def test_the_base_by_name_is_the_base_by_path(tmp_path, monkeypatch):
    by_name = load_string("_base_ = 'mmslora::_base_/mslora.py'\n", tmp_path, monkeypatch)
    by_path = Config.fromfile(osp.join(ROOT, 'configs/_base_/mslora.py'))
    assert by_name.to_dict() == by_path.to_dict()  # no _scope_ added: types resolve as before
    assert 'custom_imports' not in by_name  # it would clash with an upstream base's


def test_a_shipped_config_by_name_is_the_config_by_path(tmp_path, monkeypatch):
    """Its own ``../_base_/mslora.py`` and ``mmdet::`` bases resolve inside the package."""
    by_name = load_string(f"_base_ = 'mmslora::{MASK_RCNN}'\n", tmp_path, monkeypatch)
    by_path = Config.fromfile(osp.join(ROOT, 'configs', MASK_RCNN))
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.model.backbone.type == 'mmslora.MSLoRABackbone'
    assert by_name.model._scope_ == 'mmdet'


def test_a_user_config_on_an_upstream_detector_builds(tmp_path, monkeypatch):
    """The backbone ('ResNet', unscoped) is built in mmdet's scope inside the wrapper."""
    cfg = load_string(USER_CONFIG, tmp_path, monkeypatch)
    model = build_model_from_config(cfg)
    assert type(model.backbone).__name__ == 'MSLoRABackbone'
    assert type(model.backbone.backbone).__name__ == 'ResNet'
    assert len(model.backbone.adapters) == 8  # one per BasicBlock of R-18
    assert cfg.optim_wrapper.constructor == 'mmslora.TrainableOptimWrapperConstructor'


def test_an_unknown_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_string("_base_ = 'mmslora::nonexistent.py'\n", tmp_path, monkeypatch)
    message = str(info.value)
    assert message.startswith('mmslora::nonexistent.py: mmslora ships no such config')
    assert CONFIG_ROOT in message and f'mmslora::{MASK_RCNN}' in message


def test_command_line_names():
    assert resolve_config(f'mmslora::{MASK_RCNN}') == shipped_config(MASK_RCNN)
    assert osp.samefile(shipped_config(MASK_RCNN), osp.join(ROOT, 'configs', MASK_RCNN))
    assert resolve_config('my/config.py') == 'my/config.py'  # a path stays a path
    with pytest.raises(FileNotFoundError, match='mmslora::mmdet/x.py: mmslora ships no'):
        resolve_config('mmslora::mmdet/x.py')


def test_python_m_mmslora_runs_a_script_after_import(tmp_path, monkeypatch):
    """What an upstream tools/train.py needs: mmslora:: names work in the script."""
    script = tmp_path / 'upstream_tool.py'
    script.write_text(
        'import sys\nfrom mmengine.config import Config\n'
        'if __name__ == "__main__":\n'
        '    cfg = Config.fromfile(sys.argv[1])\n'
        '    open(sys.argv[2], "w").write(cfg.model.backbone.type)\n'
    )
    (tmp_path / 'cfg.py').write_text(
        "_base_ = 'mmslora::_base_/mslora.py'\nmodel = dict(backbone=_base_.mslora_backbone)\n"
    )
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    monkeypatch.chdir(tmp_path)
    run_script.main([str(script), 'cfg.py', 'out.txt'])
    assert (tmp_path / 'out.txt').read_text() == 'mmslora.MSLoRABackbone'
    assert sys.argv == [str(script), 'cfg.py', 'out.txt']
    with pytest.raises(SystemExit):
        run_script.main([str(tmp_path / 'missing.py')])
