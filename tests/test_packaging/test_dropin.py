"""The real drop-in: a wheel of mmslora installed into a clean virtual environment that
already has the stack, used from a folder that is not the repository. mmdet's own
``tools/train.py`` (from the mmdet wheel) trains a user config that inherits an mmdet
config plus ``mmslora::_base_/mslora.py`` for one iteration on a tiny COCO folder,
then resumes it; the console scripts are there and run on ``mmslora::`` names.
CPU, about a minute and a half."""

import json
import os
import os.path as osp
import shutil
import sys

import cv2
import numpy as np
import pytest

from mmslora_testing import STACK, stack_venv
from mmslora_testing import run_clean as run

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: not copied with the sources: environments, build outputs, data, git
IGNORED = (
    '.git',
    '.venv*',
    'build',
    '*.egg-info',
    '__pycache__',
    '.pytest_cache',
    'work_dirs',
    'data',
)

USER_CONFIG = """
# A user's config: an upstream detector plus MSLoRA by name, as the README says.
_base_ = ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 'mmslora::_base_/mslora.py']
model = dict(
    backbone=dict(_base_.mslora_backbone,
                  backbone=dict(_base_.model.backbone, init_cfg=None)),  # no download
    bbox_head=dict(num_classes=1))
optim_wrapper = _base_.mslora_optim_wrapper
load_from = None

pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(64, 64), keep_ratio=True), dict(type='PackDetInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='{data}', ann_file='annotations/train.json',
                 data_prefix=dict(img='images/'), metainfo=dict(classes=('cell', )),
                 filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1)
val_dataloader = val_cfg = val_evaluator = None
test_dataloader = test_cfg = test_evaluator = None
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1), logger=dict(interval=1))
log_processor = dict(by_epoch=False)
"""


def tiny_coco(root):
    """Two 64x64 images with one bright box each, and their COCO annotations."""
    os.makedirs(osp.join(root, 'images'))
    os.makedirs(osp.join(root, 'annotations'))
    images, annotations = [], []
    for i, (x, y) in enumerate([(8, 12), (30, 20)], start=1):
        image = np.full((64, 64, 3), 30, np.uint8)
        image[y : y + 20, x : x + 24] = 220
        cv2.imwrite(osp.join(root, 'images', f'{i}.png'), image)
        images.append(dict(id=i, file_name=f'{i}.png', width=64, height=64))
        annotations.append(
            dict(id=i, image_id=i, category_id=1, bbox=[x, y, 24, 20], area=480, iscrowd=0)
        )
    with open(osp.join(root, 'annotations', 'train.json'), 'w') as f:
        json.dump(
            dict(images=images, annotations=annotations, categories=[dict(id=1, name='cell')]), f
        )


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
    """A clean venv that sees the stack's site-packages (a .pth line: the .pth files
    there, the editable mmslora's among them, are not read), with mmslora's wheel."""
    tmp = tmp_path_factory.mktemp('dropin')
    src, wheels, env = tmp / 'src', tmp / 'wheels', tmp / 'venv'
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(wheels),
            str(src),
        ],
        cwd=tmp,
    )
    python, site = stack_venv(env)
    (wheel,) = wheels.glob('mmslora-*.whl')
    run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)], cwd=tmp)
    return env, site


@pytest.fixture
def user_dir(tmp_path):
    """A user's project folder outside the repository, with tiny COCO data."""
    tiny_coco(str(tmp_path / 'data'))
    (tmp_path / 'user_cfg.py').write_text(
        USER_CONFIG.replace('{data}', str(tmp_path / 'data') + '/')
    )
    return tmp_path


def test_configs_load_by_name_from_another_folder(venv, tmp_path):
    env, site = venv
    probe = (
        "import mmslora\nfrom mmengine.config import Config\n"
        "print('FILE', mmslora.__file__)\n"
        "for name in ('_base_/mslora.py', 'mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py'):\n"
        "    cfg = Config.fromstring(f\"_base_ = 'mmslora::{name}'\", '.py')\n"
        "    print('CFG', cfg.get('model', {}).get('backbone', {}).get('type'), "
        "cfg.mslora_backbone.type)\n"
    )
    out = run([str(env / 'bin' / 'python'), '-c', probe], cwd=tmp_path).splitlines()
    assert 'FILE ' + osp.join(site, 'mmslora', '__init__.py') in out  # the wheel's copy
    assert [line for line in out if line.startswith('CFG ')] == [
        'CFG None mmslora.MSLoRABackbone',
        'CFG mmslora.MSLoRABackbone mmslora.MSLoRABackbone',
    ]
    # without `import mmslora` first (docs/troubleshooting.md)
    plain = (
        "from mmengine.config import Config\n"
        "Config.fromstring(\"_base_ = 'mmslora::_base_/mslora.py'\", '.py')\n"
    )
    out = run([str(env / 'bin' / 'python'), '-c', plain], cwd=tmp_path, fails=True)
    assert 'AssertionError: mmengine does not support to load mmslora config.' in out


def test_mmdet_train_tool_trains_and_resumes(venv, user_dir):
    env, site = venv
    python = str(env / 'bin' / 'python')
    train = osp.join(STACK, 'mmdet', '.mim', 'tools', 'train.py')  # mmdet's own
    work = str(user_dir / 'work')
    log = run([python, '-m', 'mmslora', train, 'user_cfg.py', '--work-dir', work], cwd=user_dir)
    assert 'Iter(train) [1/1]' in log and 'loss_cls' in log
    assert osp.isfile(osp.join(work, 'iter_1.pth'))
    log = run(
        [
            python,
            '-m',
            'mmslora',
            train,
            'user_cfg.py',
            '--work-dir',
            work,
            '--resume',
            '--cfg-options',
            'train_cfg.max_iters=2',
        ],
        cwd=user_dir,
    )
    assert 'Auto resumed from the latest checkpoint' in log
    assert 'resumed epoch: 0, iter: 1' in log
    assert 'Iter(train) [2/2]' in log and osp.isfile(osp.join(work, 'iter_2.pth'))


def test_console_scripts(venv, tmp_path):
    env, site = venv
    bin_dir = env / 'bin'
    for name in (
        'mmslora-train',
        'mmslora-test',
        'mmslora-count-params',
        'mmslora-export-adapter',
        'mmslora-merge',
    ):
        assert f'usage: {name}' in run([str(bin_dir / name), '-h'], cwd=tmp_path)
    out = run(
        [
            str(bin_dir / 'mmslora-count-params'),
            'mmslora::mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py',
        ],
        cwd=tmp_path,
    )
    assert 'adapters                     624,176' in out  # the R-50 count of docs/wrap_backbone.md
    # mim's layout: `mim train mmslora CONFIG` runs this file on the shipped config
    assert osp.isfile(osp.join(site, 'mmslora', '.mim', 'tools', 'train.py'))
    assert not osp.exists(osp.join(site, 'mmslora', '.mim', 'tools', 'demo.py'))
    assert osp.isfile(osp.join(site, 'mmslora', '.mim', 'model-index.yml'))
