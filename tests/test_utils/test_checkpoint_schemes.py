"""mmslora.utils.checkpoint.schemes: mmengine's CheckpointLoader, its Runner resume
and load_from, and the model-zoo schemes all load through the safe loader."""

import shutil

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import checkpoint as mm_checkpoint

import mmslora  # noqa: F401  (installs the safe loader)
from mmslora.compat.mmengine import checkpoint_schemes
from mmslora.utils.checkpoint import UnsafeCheckpointError, safe_torch_load, schemes
from mmslora_testing import checkpointing_runner, evil_checkpoint, snapshot, toy_model


class RecordStartHook(Hook):
    """Records the counters and weights the loop starts from (after resume)."""

    def before_train(self, runner):
        self.iter, self.epoch = runner.iter, runner.epoch
        self.state = snapshot(runner.model)
        self.momentum = {
            i: s['momentum_buffer'].clone()
            for i, s in runner.optim_wrapper.optimizer.state_dict()['state'].items()
        }
        self.loss_count = (
            len(runner.message_hub.get_scalar('train/loss').data[0])
            if 'train/loss' in runner.message_hub.log_scalars
            else 0
        )


def test_safe_loader_is_registered_with_mmengine():
    loader = mm_checkpoint.CheckpointLoader._get_checkpoint_loader
    assert loader('/some/file.pth') is schemes.load_from_local
    assert loader('https://example.com/x.pth') is schemes.load_from_http
    assert loader('torchvision://resnet50') is schemes.load_from_torchvision
    assert loader('open-mmlab://resnet50_v1c') is schemes.load_from_openmmlab
    assert loader('s3://bucket/x.pth') is schemes.load_from_ceph
    assert loader('mmcls://resnet18') is schemes.load_from_mmcls
    before = dict(checkpoint_schemes())
    schemes.install_safe_checkpoint_loading()  # idempotent
    assert dict(checkpoint_schemes()) == before


@pytest.mark.usefixtures('loading_path')
def test_runner_resume_restores_state(trained, tmp_path):
    work_dir, final_state = trained
    resume_dir = tmp_path / 'resume'
    shutil.copytree(work_dir, resume_dir)  # resume=True finds last_checkpoint
    hook = RecordStartHook()
    runner = checkpointing_runner(
        resume_dir, 'resumed', max_iters=6, resume=True, custom_hooks=[hook]
    )
    runner.train()
    saved = safe_torch_load(resume_dir / 'iter_4.pth', map_location='cpu')
    assert hook.iter == 4  # the loop started where the first run stopped
    for key, value in final_state.items():
        torch.testing.assert_close(hook.state[key], value, rtol=0, atol=0)
        torch.testing.assert_close(hook.state[key], saved['state_dict'][key], rtol=0, atol=0)
    saved_momentum = saved['optimizer']['state']
    assert hook.momentum and set(hook.momentum) == set(saved_momentum)
    for idx, buf in hook.momentum.items():
        torch.testing.assert_close(buf, saved_momentum[idx]['momentum_buffer'])
    assert hook.loss_count == 4  # message hub history came back too
    assert runner.iter == 6  # ... and training continued


def test_runner_load_from_with_resume_epoch_based(tmp_path):
    first = checkpointing_runner(tmp_path / 'a', 'epoch_first', by_epoch=True, max_epochs=1)
    first.train()
    state = snapshot(first.model)
    hook = RecordStartHook()
    second = checkpointing_runner(
        tmp_path / 'b',
        'epoch_second',
        by_epoch=True,
        max_epochs=2,
        load_from=str(tmp_path / 'a' / 'epoch_1.pth'),
        resume=True,
        custom_hooks=[hook],
    )
    second.train()
    assert (hook.epoch, hook.iter) == (1, 4)
    for key, value in state.items():
        torch.testing.assert_close(hook.state[key], value, rtol=0, atol=0)
    assert (second.epoch, second.iter) == (2, 8)


@pytest.mark.usefixtures('loading_path')
def test_mmengine_load_checkpoint(trained, runner_checkpoint):
    model = toy_model()
    ckpt = mm_checkpoint.load_checkpoint(model, str(runner_checkpoint), map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    for key, value in trained[1].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='can not be found'):
        mm_checkpoint._load_checkpoint(str(tmp_path / 'nope.pth'))


@pytest.mark.usefixtures('loading_path')
def test_http_scheme(runner_checkpoint, tmp_path, monkeypatch):
    """http(s): download through torch.hub (faked), load safely from its cache."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    marker = tmp_path / 'PAYLOAD_RAN'
    evil_checkpoint(tmp_path / 'evil.pth', marker)
    served = {
        'good.pth': runner_checkpoint.read_bytes(),
        'evil.pth': (tmp_path / 'evil.pth').read_bytes(),
    }

    def fake_download(url, dst, hash_prefix=None, progress=True):
        with open(dst, 'wb') as f:
            f.write(served[url.rsplit('/', 1)[-1]])

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    ckpt = mm_checkpoint._load_checkpoint('https://example.invalid/good.pth')
    assert ckpt['meta']['iter'] == 4
    with pytest.raises(UnsafeCheckpointError) as info:
        mm_checkpoint._load_checkpoint('https://example.invalid/evil.pth')
    assert info.value.globals in (['posix.system'], ['nt.system'])
    assert 'https://example.invalid/evil.pth' in info.value.filename
    assert not marker.exists()


@pytest.mark.parametrize(
    'name', ['torchvision://resnet18', 'open-mmlab://resnet50_v1c', 'mmcls://resnet18']
)
def test_model_zoo_schemes_download_and_load_safely(tmp_path, monkeypatch, name):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = {'fc.weight': torch.ones(2, 2)}
    if name.startswith('mmcls://'):
        weights = {'state_dict': {'backbone.conv1.weight': torch.ones(1)}}
    urls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        urls.append(url)
        torch.save(weights, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    ckpt = mm_checkpoint._load_checkpoint(name)
    assert len(urls) == 1 and urls[0].startswith('https://')
    if name.startswith('mmcls://'):  # mmengine's key conversion still applies
        assert list(ckpt['state_dict']) == ['conv1.weight']
    else:
        assert list(ckpt) == ['fc.weight']
