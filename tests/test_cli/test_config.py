"""mmslora.cli.config: the switches of tools/train.py and tools/test.py applied to a
config."""

import argparse

import pytest
import torch
from mmengine.config import Config

from mmslora.cli import add_common_args, load_cli_config, prepare_test_config, prepare_train_config
from mmslora_testing import CLS, DET

HOOKS = ['mmslora.ParameterReportHook', 'mmslora.RandomStateHook', 'mmslora.CheckpointFitHook']


def hook_types(cfg):
    return [h['type'] for h in cfg.custom_hooks]


def test_load_cli_config_applies_the_options(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_common_args(parser)
    args = parser.parse_args([CLS, '--cfg-options', 'train_cfg.max_iters=3'])
    cfg = load_cli_config(args)
    assert cfg.train_cfg.max_iters == 3
    assert cfg.launcher == 'none'
    assert cfg.work_dir == './work_dirs/effnet-lite0-mslora_fashion-mnist'
    args = parser.parse_args([CLS, '--work-dir', str(tmp_path)])
    assert load_cli_config(args).work_dir == str(tmp_path)


def test_prepare_train_config_adds_the_hooks_once():
    cfg = prepare_train_config(Config.fromfile(CLS))
    assert hook_types(cfg)[-3:] == HOOKS
    cfg = Config.fromfile(CLS)
    cfg.custom_hooks = [dict(type='RandomStateHook')]  # the unscoped name counts too
    assert hook_types(prepare_train_config(cfg)) == ['RandomStateHook', HOOKS[0], HOOKS[2]]


@pytest.mark.parametrize('resume, load_from', [('auto', None), ('ckpt.pth', 'ckpt.pth')])
def test_prepare_train_config_resume(resume, load_from):
    cfg = prepare_train_config(Config.fromfile(CLS), resume=resume)
    assert cfg.resume is True and cfg.load_from == load_from


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU refusal')
def test_amp_needs_a_gpu():
    with pytest.raises(RuntimeError, match='--amp needs a CUDA GPU'):
        prepare_train_config(Config.fromfile(CLS), amp=True)


def test_prepare_test_config(tmp_path):
    cfg = prepare_test_config(Config.fromfile(DET), 'ckpt.pth', show_dir=str(tmp_path))
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.custom_hooks[-1] == dict(type=HOOKS[2], strict=True)
    vis = cfg.default_hooks.visualization
    assert vis.draw and not vis.show and vis.test_out_dir == str(tmp_path)


def test_show_dir_needs_a_visualization_hook():
    cfg = Config.fromfile(CLS)
    cfg.default_hooks.pop('visualization', None)
    with pytest.raises(ValueError, match='--show-dir needs a `visualization` entry'):
        prepare_test_config(cfg, 'ckpt.pth', show_dir='out')
