"""mmslora.registry: the registries' ``locations`` let mmengine import mmslora by
itself."""

import os
import subprocess
import sys
import textwrap

from mmslora_testing import CLS

NO_CUSTOM_IMPORTS = textwrap.dedent('''
    import sys
    from mmengine.config import Config
    from mmengine.runner import Runner

    config, root, work = sys.argv[1:4]
    # the shipped configs declare no `custom_imports`: nothing of mmslora imported yet
    cfg = Config.fromfile(config)
    assert 'custom_imports' not in cfg
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
    it meets a type scoped ``mmslora.``: a shipped config (no ``custom_imports``, given
    by its path) trains in a process that never imported mmslora, and safe checkpoint
    loading is on before the first checkpoint is read. An unscoped ``MSLoRABackbone``
    is then an upstream registry KeyError."""
    script = tmp_path / 'no_custom_imports.py'
    script.write_text(NO_CUSTOM_IMPORTS)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    proc = subprocess.run(
        [sys.executable, str(script), CLS, fashion_root, str(tmp_path / 'work')],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'BUILT mmslora.models.wrapper True' in out
    assert 'TRAINED 1' in out
    assert 'SAFE mmslora.utils.checkpoint.schemes' in out
    assert (
        'UNSCOPED \'MSLoRABackbone is not in the mmpretrain::model registry. Please '
        'check whether the value of `MSLoRABackbone` is correct or it was registered '
        'as expected.'
    ) in out
