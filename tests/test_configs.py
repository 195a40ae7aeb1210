"""Every shipped config loads, inherits an upstream config, wraps its backbone in
MSLoRABackbone, builds offline in its toolbox's scope, and trains < 5% of its
backbone."""

import argparse
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from mmslora.cli import add_common_args, load_cli_config
from mmslora.models import MSLoRABackbone, count_parameters
from mmslora.models.peers import METHODS, apply_method
from mmslora.utils.config import build_model_from_config, disable_pretrained
from mmslora_testing import build_in_scope

pytestmark = pytest.mark.usefixtures('restore_default_scope')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASK_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'mm*', '*.py')))
DEMO_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'demo', '*.py')))
REQUIRED = {
    'mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py',
    'mmdet/mask-rcnn_swin-t-p4-w7-mslora_fpn_1x_coco.py',
    'mmseg/upernet_r50-mslora_4xb4-160k_ade20k-512x512.py',
    'mmseg/swin-tiny-patch4-window7-in1k-pre-mslora_upernet_8xb2-160k_ade20k-512x512.py',
    'mmseg/vit_vit-b16-mslora_mln_upernet_8xb2-160k_ade20k-512x512.py',
    'mmpretrain/resnet50-mslora_8xb32-ft30e_in1k.py',
    'mmpretrain/swin-tiny-mslora_16xb64-ft30e_in1k.py',
    'mmpretrain/vit-base-p16-mslora_64xb64-ft30e_in1k.py',
}


def assert_mmslora_types_scoped(node):
    """Every ``type`` that names a class registered by mmslora is written
    ``mmslora.<Name>``: an unscoped one resolves only where mmslora was imported first."""
    from mmslora import registry

    ours = {
        name
        for reg in (
            registry.MODELS,
            registry.OPTIM_WRAPPER_CONSTRUCTORS,
            registry.HOOKS,
            registry.DATASETS,
            registry.TRANSFORMS,
        )
        for name in reg.module_dict
    }
    if isinstance(node, dict):
        for key in ('type', 'constructor'):
            assert node.get(key) not in ours, f'{key}={node[key]!r}: write mmslora.{node[key]}'
        for value in node.values():
            assert_mmslora_types_scoped(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            assert_mmslora_types_scoped(item)


def rel(path):
    return osp.relpath(path, osp.join(ROOT, 'configs'))


def test_required_configs_exist():
    assert REQUIRED <= {rel(p) for p in TASK_CONFIGS}


def upstream_base(path):
    """The ``mmdet::`` / ``mmseg::`` / ``mmpretrain::`` base a config names, itself or
    through the shipped config it inherits (``'./<config>.py'``)."""
    text = open(path).read()
    upstream = re.search(r"'(mmdet|mmseg|mmpretrain)::([^']+\.py)'", text)
    local = re.search(r"'\./([^']+\.py)'", text)
    if upstream is None and local is not None:
        return upstream_base(osp.join(osp.dirname(path), local.group(1)))
    return upstream


@pytest.mark.parametrize('path', TASK_CONFIGS + DEMO_CONFIGS, ids=rel)
def test_config_builds_offline_under_five_percent(path):
    upstream = upstream_base(path)
    assert upstream, 'the config must inherit an upstream mm* config'
    cfg = Config.fromfile(path)
    assert cfg.default_scope == upstream.group(1)
    assert cfg.model.backbone.type == 'mmslora.MSLoRABackbone'
    # no custom_imports (it would clash with an upstream base's): mmslora types are
    # scoped, so mmengine imports mmslora when it meets them
    assert 'custom_imports' not in cfg
    assert_mmslora_types_scoped(cfg.to_dict())
    model = build_model_from_config(disable_pretrained(cfg))
    assert isinstance(model.backbone, MSLoRABackbone)
    report = count_parameters(model)
    assert 0 < report.backbone_share < 0.05
    assert report.adapter == report.backbone_trainable
    assert cfg.optim_wrapper.constructor == 'mmslora.TrainableOptimWrapperConstructor'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    in_optimizer = {id(p) for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


RECIPE = """
_base_ = ['{upstream}', '{mslora_base}']
model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))
optim_wrapper = _base_.mslora_optim_wrapper
"""


@pytest.mark.parametrize(
    'upstream, scope',
    [
        ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmdet'),
        ('mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'mmseg'),
        ('mmpretrain::resnet/resnet18_8xb16_cifar10.py', 'mmpretrain'),
    ],
)
def test_the_documented_recipe_turns_any_upstream_config_into_mslora(tmp_path, upstream, scope):
    path = tmp_path / 'my_config.py'
    path.write_text(
        RECIPE.format(upstream=upstream, mslora_base=osp.join(ROOT, 'configs/_base_/mslora.py'))
    )
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == scope
    model = build_model_from_config(disable_pretrained(cfg))
    report = count_parameters(model)
    assert isinstance(model.backbone, MSLoRABackbone) and len(model.backbone.adapters) > 0
    assert 0 < report.backbone_share < 0.05
    trainable = {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad}
    assert 'backbone' in trainable  # the adapters
    assert not any(p.requires_grad for p in model.backbone.backbone.parameters())


SWITCH_CONFIGS = [
    'mmdet/mask-rcnn_r50-mslora_fpn_1x_coco.py',
    'mmpretrain/swin-tiny-mslora_16xb64-ft30e_in1k.py',
]


@pytest.mark.parametrize('config', SWITCH_CONFIGS)
@pytest.mark.parametrize('method', list(METHODS))
def test_method_switch_builds_every_peer_from_a_config(config, method):
    """``tools/train.py CONFIG --method NAME``: the same config, another method."""
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_common_args(parser)
    args = parser.parse_args([osp.join(ROOT, 'configs', config), '--method', method])
    cfg = load_cli_config(args)
    assert cfg.work_dir.endswith('_' + method)
    original = Config.fromfile(args.config).model.backbone
    assert cfg.model.backbone.backbone == original.backbone  # only the method changed
    model = build_model_from_config(disable_pretrained(cfg))
    report = count_parameters(model)
    backbone = model.backbone
    adapters = sum(p.numel() for p in backbone.adapters.parameters())
    if method == 'full':  # the wrapper freezes nothing (R-50's own frozen_stages=1 stays)
        plain = build_in_scope(cfg.default_scope, original.backbone)
        assert (
            report.backbone_trainable
            == sum(p.numel() for p in plain.parameters() if p.requires_grad)
            > 0.9 * report.backbone
        )
    elif method == 'linear_probe':
        assert report.backbone_trainable == 0
    elif method == 'bitfit':
        trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
        assert trainable and all(n.endswith('bias') for n in trainable)
    else:  # an adapter method: only its modules train, under 10% of the backbone
        adapter_type = METHODS[method]['adapter']['type'].split('.')[-1]
        assert adapter_type in {type(m).__name__ for m in backbone.modules()}
        assert report.backbone_trainable == adapters > 0
        assert report.backbone_share < 0.10


def test_method_switch_needs_the_wrapper(tmp_path):
    path = tmp_path / 'plain.py'
    path.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n")
    upstream = Config.fromfile(str(path))
    with pytest.raises(ValueError, match=r"mmslora.MSLoRABackbone.*'ResNet'.*_base_"):
        apply_method(upstream.model.backbone, 'lora')
