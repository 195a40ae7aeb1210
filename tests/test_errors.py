"""Clear errors for the usual mistakes, each message asserted, and no half-loaded
model left behind by a failed load."""
import copy
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmslora  # noqa: F401
from mmslora.engine.training import prepare_test_config, prepare_train_config
from mmslora.models import MSLoRABackbone
from mmslora.utils import load_adapter, save_adapter
from mmslora.utils.adapter_io import CheckpointMismatchError
from mmslora.utils.checkpoint import DamagedCheckpointError, safe_torch_load
from mmslora.utils.data_check import DataNotFoundError, check_data
from mmslora_testing import CLS, DET, SEG, load_tool

pytestmark = pytest.mark.usefixtures('one_thread')


def resnet_wrapper(depth=18, **adapter):
    torch.manual_seed(0)
    return MSLoRABackbone(
        backbone=dict(type='mmdet.ResNet', depth=depth, init_cfg=None),
        adapter=dict(type='mmslora.MSLoRAAdapter', **(adapter or dict(hidden_dim=8,
                                                                      groups=4))))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f'the failed load changed {changed[:5]}'


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


# --------------------------------------------------------------------------
# A config without custom_imports
# --------------------------------------------------------------------------
NO_CUSTOM_IMPORTS = textwrap.dedent('''
    import sys
    from mmengine.config import Config
    from mmengine.runner import Runner

    config, root, work = sys.argv[1:4]
    # what a config without `custom_imports` gives: nothing of mmslora imported
    cfg = Config.fromfile(config, import_custom_modules=False)
    cfg.pop('custom_imports')
    cfg.merge_from_dict({
        'work_dir': work, 'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root, 'test_dataloader.dataset.data_root': root,
        'train_dataloader.dataset.indices': 8, 'val_dataloader.dataset.indices': 8,
        'train_dataloader.batch_size': 4, 'train_dataloader.num_workers': 0,
        'val_dataloader.num_workers': 0, 'train_cfg.max_iters': 1,
        'train_cfg.val_interval': 1, 'default_hooks.checkpoint.interval': 1})
    assert 'mmslora' not in sys.modules
    runner = Runner.from_cfg(cfg)
    print('BUILT', type(runner.model.backbone).__module__, 'mmslora' in sys.modules)
    runner.train()
    print('TRAINED', runner.iter)
    from mmengine.runner.checkpoint import CheckpointLoader
    print('SAFE', CheckpointLoader._schemes[''].__module__)

    from mmengine.registry import MODELS
    cfg.model.backbone.type = 'MSLoRABackbone'  # not scoped
    try:
        MODELS.build(cfg.model)
    except KeyError as err:
        print('UNSCOPED', err)
''')


def test_config_without_custom_imports(fashion_root, tmp_path):
    """MMEngine imports ``mmslora.registry`` (so the whole package) the first time
    it meets a type scoped ``mmslora.``: a config that forgets ``custom_imports``
    still trains, and safe checkpoint loading is on before the first checkpoint is
    read. An unscoped ``MSLoRABackbone`` is then an upstream registry KeyError."""
    script = tmp_path / 'no_custom_imports.py'
    script.write_text(NO_CUSTOM_IMPORTS)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, str(script), CLS, fashion_root, str(tmp_path / 'work')],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'BUILT mmslora.models.wrapper True' in out
    assert 'TRAINED 1' in out
    assert 'SAFE mmslora.utils.checkpoint' in out
    assert ('UNSCOPED \'MSLoRABackbone is not in the mmpretrain::model registry. Please '
            'check whether the value of `MSLoRABackbone` is correct or it was registered '
            'as expected.') in out


# --------------------------------------------------------------------------
# Runner checkpoints for another model: --resume, load_from, tools/test.py
# --------------------------------------------------------------------------
def cls_cfg(fashion_root, work_dir, name, **options):
    cfg = Config.fromfile(CLS)
    cfg.merge_from_dict({
        'work_dir': str(work_dir), 'experiment_name': name,
        'train_dataloader.dataset.data_root': fashion_root,
        'val_dataloader.dataset.data_root': fashion_root,
        'test_dataloader.dataset.data_root': fashion_root,
        'train_dataloader.dataset.indices': 8, 'val_dataloader.dataset.indices': 8,
        'train_dataloader.batch_size': 4, 'train_dataloader.num_workers': 0,
        'val_dataloader.num_workers': 0, 'test_dataloader.num_workers': 0,
        'train_cfg.max_iters': 1, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 1, 'log_level': 'WARNING', **options})
    return cfg


@pytest.fixture(scope='module')
def cls_checkpoint(fashion_root, tmp_path_factory):
    """A Runner checkpoint of the demo classifier (adapters with D=32) after 1 step."""
    work = tmp_path_factory.mktemp('cls')
    Runner.from_cfg(prepare_train_config(cls_cfg(fashion_root, work, 'errors_ckpt'))).train()
    return str(work / 'iter_1.pth')


def fails_untouched(runner, run):
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
    return str(info.value)


def test_resume_with_another_adapter_config(fashion_root, cls_checkpoint, tmp_path):
    cfg = cls_cfg(fashion_root, tmp_path, 'errors_resume',
                  **{'model.backbone.adapter.hidden_dim': 16})
    runner = Runner.from_cfg(prepare_train_config(cfg, resume=cls_checkpoint))
    message = fails_untouched(runner, runner.train)
    assert f"Cannot resume from checkpoint '{cls_checkpoint}'" in message
    assert 'it does not fit the model (nothing was loaded)' in message
    assert ("'backbone.adapters.stages_0_0.proj.down.weight: file (32, 2, 1, 1) vs model "
            "(16, 2, 1, 1)'") in message
    assert "build the model from the config it was trained with" in message
    assert "adapter.hidden_dim: checkpoint 32 vs config 16" in message


def test_load_from_with_another_block_selection(fashion_root, cls_checkpoint, tmp_path):
    cfg = cls_cfg(fashion_root, tmp_path, 'errors_load_from', load_from=cls_checkpoint,
                  **{'model.backbone.blocks': dict(pattern=r'stages\.[0-3]\.\d+',
                                                   layout='nchw')})
    runner = Runner.from_cfg(prepare_train_config(cfg))
    message = fails_untouched(runner, runner.train)
    assert f"Cannot load checkpoint '{cls_checkpoint}'" in message
    assert "unexpected keys ['backbone.adapters.stages_4_0." in message
    assert 'blocks.pattern: checkpoint None vs config' in message


def test_load_from_an_unwrapped_backbone_checkpoint_warns(fashion_root, cls_checkpoint,
                                                          tmp_path):
    """An upstream checkpoint (no adapters) loads as upstream does, but its backbone
    keys, which inside the wrapper are ``backbone.backbone.*``, are named in a
    warning instead of being dropped among mmengine's unexpected keys."""
    state = safe_torch_load(cls_checkpoint, map_location='cpu')['state_dict']
    upstream = {k.replace('backbone.backbone.', 'backbone.'): v for k, v in state.items()
                if not k.startswith('backbone.adapters.')}
    path = str(tmp_path / 'upstream.pth')
    torch.save(dict(state_dict=upstream), path)
    runner = Runner.from_cfg(prepare_train_config(
        cls_cfg(fashion_root, tmp_path, 'errors_upstream', load_from=path)))
    runner.load_checkpoint(path)  # no error
    assert torch.equal(runner.model.head.fc.weight, state['head.fc.weight'])
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert ("CheckpointFitHook: 294 keys of the checkpoint, e.g. ['backbone.stem.conv.weight'"
            in log)
    assert "belong to an unwrapped backbone and are not loaded" in log


def test_test_tool_refuses_an_adapter_only_file(fashion_root, cls_checkpoint, tmp_path):
    """tools/test.py would evaluate a model whose frozen backbone never got weights
    (Runner.test does not run init_weights): refused, with what to do instead."""
    cfg = cls_cfg(fashion_root, tmp_path, 'errors_test')
    model = Runner.from_cfg(copy.deepcopy(cfg)).model
    from mmengine.runner import load_checkpoint
    load_checkpoint(model, cls_checkpoint, map_location='cpu', strict=True)
    adapter = str(tmp_path / 'adapter.pth')
    save_adapter(model, adapter)
    runner = Runner.from_cfg(prepare_test_config(cfg, adapter))
    message = fails_untouched(runner, runner.test)
    assert f"Cannot load checkpoint '{adapter}'" in message
    assert "missing keys ['backbone.backbone." in message
    assert 'This is an adapter-only file (tools/export_adapter.py): load it with ' \
           'mmslora.utils.load_adapter' in message


def test_damaged_checkpoint_through_the_train_tool(fashion_root, cls_checkpoint, tmp_path):
    damaged = tmp_path / 'iter_1.pth'
    data = open(cls_checkpoint, 'rb').read()
    damaged.write_bytes(data[:len(data) - 4096])
    train = load_tool('tools/train.py')
    with pytest.raises(DamagedCheckpointError,
                       match=r"Checkpoint '.*iter_1\.pth' is damaged or incomplete: "):
        train.main([CLS, '--work-dir', str(tmp_path / 'work'), '--resume', str(damaged),
                    '--cfg-options', f'train_dataloader.dataset.data_root={fashion_root}',
                    f'val_dataloader.dataset.data_root={fashion_root}',
                    'train_dataloader.dataset.indices=8', 'val_dataloader.dataset.indices=8',
                    'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                    'experiment_name=errors_damaged', 'log_level=WARNING'])


# --------------------------------------------------------------------------
# Missing or empty data
# --------------------------------------------------------------------------
def with_root(path, root):
    cfg = Config.fromfile(path)
    options = {f'{d}.dataset.data_root': root
               for d in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    if 'val_evaluator' in cfg and 'ann_file' in cfg.val_evaluator:
        options['val_evaluator.ann_file'] = root + 'annotations/instances_val.json'
    cfg.merge_from_dict(options)
    return cfg


def test_detection_data_missing(tmp_path):
    root = str(tmp_path) + '/'
    with pytest.raises(DataNotFoundError) as info:
        check_data(with_root(DET, root))
    assert str(info.value) == (
        'The data this config trains or tests on is missing:\n'
        f"  - train_dataloader.dataset: annotation file '{root}annotations/"
        "instances_train.json' does not exist\n"
        f"  - train_dataloader.dataset: img folder '{root}images/train/' does not exist\n"
        f"  - val_dataloader.dataset: annotation file '{root}annotations/instances_val.json'"
        ' does not exist\n'
        f"  - val_dataloader.dataset: img folder '{root}images/val/' does not exist\n"
        'Create the data with\n'
        f'    python tools/dataset_converters/nuclei.py {root}\n'
        'or point the config at where it is, e.g. --cfg-options '
        'train_dataloader.dataset.data_root=DIR/ (and the other dataloaders and evaluators '
        'likewise).')
    assert isinstance(info.value, FileNotFoundError)


def test_segmentation_image_folder_empty(nuclei_root, tmp_path):
    import shutil
    root = str(tmp_path / 'nuclei') + '/'
    shutil.copytree(nuclei_root, root)
    shutil.rmtree(root + 'images/train')
    os.makedirs(root + 'images/train')
    with pytest.raises(DataNotFoundError) as info:
        check_data(with_root(SEG, root))
    assert info.value.problems == [
        f"train_dataloader.dataset: img_path folder '{root}images/train' is empty"]
    check_data(with_root(SEG, nuclei_root))  # the real data passes
    check_data(with_root(DET, nuclei_root))


def test_classification_data_missing_through_the_train_tool(tmp_path):
    """The check runs before the Runner is built: no model, no pretrained download."""
    root = str(tmp_path / 'nothing_here') + '/'
    train = load_tool('tools/train.py')
    with pytest.raises(DataNotFoundError) as info:
        train.main([CLS, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={root}',
                    f'val_dataloader.dataset.data_root={root}'])
    assert info.value.problems == [f"train_dataloader.dataset: data_root '{root}' does not "
                                   'exist']
    assert f'python tools/dataset_converters/fashion_mnist.py {root}' in str(info.value)
    assert not osp.exists(tmp_path / 'work')  # failed before the Runner made its work dir
