"""mmslora.CheckpointFitHook: Runner checkpoints for another model (``--resume``,
``load_from``, tools/test.py) are refused before anything is loaded."""

import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint

import mmslora  # noqa: F401
from mmslora.cli import prepare_test_config, prepare_train_config
from mmslora.models import save_adapter
from mmslora.utils.checkpoint import safe_torch_load
from mmslora.utils.state_dict import CheckpointMismatchError
from mmslora_testing import CLS, assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures('one_thread')


def cls_cfg(fashion_root, work_dir, name, **options):
    cfg = Config.fromfile(CLS)
    cfg.merge_from_dict(
        {
            'work_dir': str(work_dir),
            'experiment_name': name,
            'train_dataloader.dataset.data_root': fashion_root,
            'val_dataloader.dataset.data_root': fashion_root,
            'test_dataloader.dataset.data_root': fashion_root,
            'train_dataloader.dataset.indices': 8,
            'val_dataloader.dataset.indices': 8,
            'train_dataloader.batch_size': 4,
            'train_dataloader.num_workers': 0,
            'val_dataloader.num_workers': 0,
            'test_dataloader.num_workers': 0,
            'train_cfg.max_iters': 1,
            'train_cfg.val_interval': 100,
            'default_hooks.checkpoint.interval': 1,
            'log_level': 'WARNING',
            **options,
        }
    )
    return cfg


@pytest.fixture(scope='module')
def cls_checkpoint(fashion_root, tmp_path_factory):
    """A Runner checkpoint of the demo classifier (adapters with D=32) after 1 step."""
    work = tmp_path_factory.mktemp('cls')
    Runner.from_cfg(prepare_train_config(cls_cfg(fashion_root, work, 'errors_ckpt'))).train()
    return str(work / 'iter_1.pth')


def fails_untouched(runner, run) -> CheckpointMismatchError:
    """Run ``run()`` (expected to raise) and check the model is as it was right before
    the checkpoint was read: after weight init (which loads the pretrained backbone)
    when training, as built when testing (Runner.test runs no init)."""
    snap = snapshot(runner.model)
    init = runner._init_model_weights

    def init_then_snapshot():
        init()
        snap.update(snapshot(runner.model))

    runner._init_model_weights = init_then_snapshot
    with pytest.raises(CheckpointMismatchError) as info:
        run()
    assert_unchanged(runner.model, snap)
    return info.value


def test_resume_with_another_adapter_config(fashion_root, cls_checkpoint, tmp_path):
    cfg = cls_cfg(
        fashion_root, tmp_path, 'errors_resume', **{'model.backbone.adapter.hidden_dim': 16}
    )
    runner = Runner.from_cfg(prepare_train_config(cfg, resume=cls_checkpoint))
    error = fails_untouched(runner, runner.train)
    assert (
        'backbone.adapters.stages_0_0.proj.down.weight: file (32, 2, 1, 1) vs model (16, 2, 1, 1)'
    ) in error.shapes
    assert error.missing == error.unexpected == []
    message = str(error)  # names the file, the fix and the setting that differs
    assert f"Cannot resume from checkpoint '{cls_checkpoint}'" in message
    assert 'build the model from the config it was trained with' in message
    assert 'adapter.hidden_dim: checkpoint 32 vs config 16' in message


def test_load_from_with_another_block_selection(fashion_root, cls_checkpoint, tmp_path):
    cfg = cls_cfg(
        fashion_root,
        tmp_path,
        'errors_load_from',
        load_from=cls_checkpoint,
        **{'model.backbone.blocks': dict(pattern=r'stages\.[0-3]\.\d+', layout='nchw')},
    )
    runner = Runner.from_cfg(prepare_train_config(cfg))
    error = fails_untouched(runner, runner.train)
    assert error.unexpected[0].startswith('backbone.adapters.stages_4_0.')  # sorted
    message = str(error)
    assert f"Cannot load checkpoint '{cls_checkpoint}'" in message
    assert 'blocks.pattern: checkpoint None vs config' in message


def test_load_from_an_unwrapped_backbone_checkpoint_warns(fashion_root, cls_checkpoint, tmp_path):
    """An upstream checkpoint (no adapters) loads as upstream does, but its backbone
    keys, which inside the wrapper are ``backbone.backbone.*``, are named in a
    warning instead of being dropped among mmengine's unexpected keys."""
    state = safe_torch_load(cls_checkpoint, map_location='cpu')['state_dict']
    upstream = {
        k.replace('backbone.backbone.', 'backbone.'): v
        for k, v in state.items()
        if not k.startswith('backbone.adapters.')
    }
    path = str(tmp_path / 'upstream.pth')
    torch.save(dict(state_dict=upstream), path)
    runner = Runner.from_cfg(
        prepare_train_config(cls_cfg(fashion_root, tmp_path, 'errors_upstream', load_from=path))
    )
    runner.load_checkpoint(path)  # no error
    assert torch.equal(runner.model.head.fc.weight, state['head.fc.weight'])
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert "CheckpointFitHook: 294 keys of the checkpoint, e.g. ['backbone.stem.conv.weight'" in log
    assert 'belong to an unwrapped backbone and are not loaded' in log


def test_test_tool_refuses_an_adapter_only_file(fashion_root, cls_checkpoint, tmp_path):
    """tools/test.py would evaluate a model whose frozen backbone never got weights
    (Runner.test does not run init_weights): refused, with what to do instead."""
    cfg = cls_cfg(fashion_root, tmp_path, 'errors_test')
    model = Runner.from_cfg(copy.deepcopy(cfg)).model
    load_checkpoint(model, cls_checkpoint, map_location='cpu', strict=True)
    adapter = str(tmp_path / 'adapter.pth')
    save_adapter(model, adapter)
    runner = Runner.from_cfg(prepare_test_config(cfg, adapter))
    error = fails_untouched(runner, runner.test)
    assert error.missing[0].startswith('backbone.backbone.')
    message = str(error)
    assert f"Cannot load checkpoint '{adapter}'" in message
    assert (
        'This is an adapter-only file (tools/export_adapter.py): load it with '
        'mmslora.models.load_adapter' in message
    )
