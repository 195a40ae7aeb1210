"""Safe (weights-only + allowlist) checkpoint loading: mmslora.utils.checkpoint."""
import fractions
import io
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mm_checkpoint
from torch.utils.data import Dataset

import mmslora  # noqa: F401  (installs the safe loader)
from mmslora.utils import checkpoint as safe_ckpt
from mmslora.utils.checkpoint import (DamagedCheckpointError, UnsafeCheckpointError,
                                      allow_globals, safe_torch_load)
from mmslora_testing import ToyRegressor

# mmengine's own local loader, kept by its module under its original name.
MMENGINE_LOAD_FROM_LOCAL = mm_checkpoint.load_from_local


def toy_model() -> ToyRegressor:
    return ToyRegressor(nn.Linear(2, 1))


class ToyDataset(Dataset):

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 2, generator=gen)
        self.y = torch.randn(16, generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], labels=self.y[idx])


class ToyMetric(BaseMetric):
    """Returns numpy scalars, as many OpenMMLab metrics do."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        labels = torch.stack(data_batch['labels'])
        err = (torch.stack(data_samples) - labels).abs().mean()
        self.results.append(float(err))

    def compute_metrics(self, results):
        return dict(mae=np.float32(np.mean(results)),
                    mae64=np.float64(np.mean(results)),
                    n=np.int64(len(results)))


class RecordStartHook(Hook):
    """Records the counters and weights the loop starts from (after resume)."""

    def before_train(self, runner):
        model = runner.model
        self.iter, self.epoch = runner.iter, runner.epoch
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.momentum = {
            k: v.clone() for k, v in (
                (i, s['momentum_buffer'])
                for i, s in runner.optim_wrapper.optimizer.state_dict()['state'].items())
        }
        self.loss_count = len(runner.message_hub.get_scalar('train/loss').data[0]) \
            if 'train/loss' in runner.message_hub.log_scalars else 0


def make_runner(work_dir, name, by_epoch=False, max_iters=4, max_epochs=2, **kwargs):
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
        checkpoint = dict(type='CheckpointHook', interval=1)
    else:
        train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=2)
        checkpoint = dict(type='CheckpointHook', interval=2, by_epoch=False,
                          save_best='toy/mae', rule='less')
    return Runner(
        model=toy_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(dataset=ToyDataset(),
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=4, num_workers=0),
        val_dataloader=dict(dataset=ToyDataset(),
                            sampler=dict(type='DefaultSampler', shuffle=False),
                            batch_size=4, num_workers=0),
        val_evaluator=dict(type=ToyMetric),
        val_cfg=dict(),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[3], by_epoch=False),
        default_hooks=dict(checkpoint=checkpoint),
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A short iteration-based training run: (work_dir, final weights)."""
    work_dir = tmp_path_factory.mktemp('train')
    runner = make_runner(work_dir, 'first')
    runner.train()
    state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    return work_dir, state


def copy_ckpt(trained, tmp_path, name='iter_4.pth'):
    dst = tmp_path / name
    shutil.copy(trained[0] / name, dst)
    return dst


def evil_checkpoint(path, marker):
    class Payload:

        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': Payload()}, str(path))


# --------------------------------------------------------------------------
# (a) Runner save -> resume, and proof that it needs the safe loader
# --------------------------------------------------------------------------
def test_plain_weights_only_load_fails_on_runner_checkpoint(trained, tmp_path):
    path = copy_ckpt(trained, tmp_path)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(str(path), weights_only=True)
    # ... and so does mmengine's own local loader on this torch
    with pytest.raises(pickle.UnpicklingError):
        MMENGINE_LOAD_FROM_LOCAL(str(path), 'cpu')
    ckpt = safe_torch_load(path, map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    hub = ckpt['message_hub']['log_scalars']
    assert type(hub['train/loss']).__name__ == 'HistoryBuffer'
    assert hub['train/loss'].mean() > 0  # statistics methods work after load
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float32)


def test_safe_loader_is_registered_with_mmengine():
    loader = mm_checkpoint.CheckpointLoader._get_checkpoint_loader
    assert loader('/some/file.pth') is safe_ckpt.load_from_local
    assert loader('https://example.com/x.pth') is safe_ckpt.load_from_http
    assert loader('torchvision://resnet50') is safe_ckpt.load_from_torchvision
    assert loader('open-mmlab://resnet50_v1c') is safe_ckpt.load_from_openmmlab
    assert loader('s3://bucket/x.pth') is safe_ckpt.load_from_ceph
    before = dict(mm_checkpoint.CheckpointLoader._schemes)
    safe_ckpt.install_safe_checkpoint_loading()  # idempotent
    assert dict(mm_checkpoint.CheckpointLoader._schemes) == before


def test_runner_resume_restores_state(trained, tmp_path):
    work_dir, final_state = trained
    resume_dir = tmp_path / 'resume'
    shutil.copytree(work_dir, resume_dir)  # resume=True finds last_checkpoint
    hook = RecordStartHook()
    runner = make_runner(resume_dir, 'resumed', max_iters=6, resume=True,
                         custom_hooks=[hook])
    runner.train()
    saved = safe_torch_load(resume_dir / 'iter_4.pth', map_location='cpu')
    assert hook.iter == 4  # the loop started where the first run stopped
    for key, value in final_state.items():
        torch.testing.assert_close(hook.state[key], value, rtol=0, atol=0)
        torch.testing.assert_close(hook.state[key], saved['state_dict'][key],
                                   rtol=0, atol=0)
    saved_momentum = saved['optimizer']['state']
    assert hook.momentum and set(hook.momentum) == set(saved_momentum)
    for idx, buf in hook.momentum.items():
        torch.testing.assert_close(buf, saved_momentum[idx]['momentum_buffer'])
    assert hook.loss_count == 4  # message hub history came back too
    assert runner.iter == 6  # ... and training continued


def test_runner_load_from_with_resume_epoch_based(tmp_path):
    first = make_runner(tmp_path / 'a', 'epoch_first', by_epoch=True, max_epochs=1)
    first.train()
    state = {k: v.detach().clone() for k, v in first.model.state_dict().items()}
    hook = RecordStartHook()
    second = make_runner(tmp_path / 'b', 'epoch_second', by_epoch=True, max_epochs=2,
                         load_from=str(tmp_path / 'a' / 'epoch_1.pth'), resume=True,
                         custom_hooks=[hook])
    second.train()
    assert (hook.epoch, hook.iter) == (1, 4)
    for key, value in state.items():
        torch.testing.assert_close(hook.state[key], value, rtol=0, atol=0)
    assert (second.epoch, second.iter) == (2, 8)


# --------------------------------------------------------------------------
# (e) mmengine.runner.load_checkpoint on a Runner-saved file
# --------------------------------------------------------------------------
def test_mmengine_load_checkpoint(trained, tmp_path):
    path = copy_ckpt(trained, tmp_path)
    model = toy_model()
    ckpt = mm_checkpoint.load_checkpoint(model, str(path), map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    for key, value in trained[1].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


# --------------------------------------------------------------------------
# (b) a malicious file is refused and its payload does not run
# --------------------------------------------------------------------------
@pytest.mark.parametrize('via', ['safe_torch_load', 'load_checkpoint', 'runner'])
def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch, via):
    monkeypatch.delenv(safe_ckpt.TRUST_ENV_VAR, raising=False)
    # an explicit weights_only=True is not overridden by torch's escape hatch
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'PAYLOAD_RAN'
    path = tmp_path / 'evil.pth'
    evil_checkpoint(path, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        if via == 'safe_torch_load':
            safe_torch_load(path)
        elif via == 'load_checkpoint':
            mm_checkpoint.load_checkpoint(toy_model(), str(path))
        else:
            make_runner(tmp_path / 'work', 'evil', load_from=str(path)).load_or_resume()
    message = str(info.value)
    assert '`posix.system`' in message or '`nt.system`' in message
    assert str(path) in message
    assert 'MMSLORA_TRUST_CHECKPOINTS=1' in message
    assert 'allow_globals(' in message
    assert info.value.filename == str(path)
    assert info.value.globals in (['posix.system'], ['nt.system'])
    assert not marker.exists()


def test_malicious_legacy_format_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'PAYLOAD_RAN'

    class Payload:

        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    path = tmp_path / 'evil_legacy.pth'
    torch.save({'x': Payload()}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match='posix.system|nt.system'):
        safe_torch_load(path)
    assert not marker.exists()


def test_non_allowlisted_getattr_target_is_refused(tmp_path):
    """builtins.getattr is only allowed for HistoryBuffer's statistics methods."""

    from mmengine.logging import HistoryBuffer

    class Sneaky:

        def __init__(self, owner, name):
            self.owner, self.name = owner, name

        def __reduce__(self):
            return (getattr, (self.owner, self.name))

    for owner, name in [(np.ndarray, 'tofile'), (HistoryBuffer, '__init__')]:
        path = tmp_path / f'getattr_{name}.pth'
        torch.save({'x': Sneaky(owner, name)}, str(path))
        with pytest.raises(pickle.UnpicklingError, match=f'getattr.*{name}'):
            safe_torch_load(path)


# --------------------------------------------------------------------------
# (c) explicit opt-ins for trusted files
# --------------------------------------------------------------------------
def test_trusted_file_needs_an_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(safe_ckpt.TRUST_ENV_VAR, raising=False)
    monkeypatch.setattr(safe_ckpt, '_extra_globals', [])
    path = tmp_path / 'custom.pth'
    torch.save({'ratio': fractions.Fraction(3, 4), 'w': torch.ones(2)}, str(path))
    with pytest.raises(UnsafeCheckpointError, match='fractions.Fraction'):
        safe_torch_load(path)

    # opt-in 1: trust the whole file (full unpickling), with a warning
    monkeypatch.setenv(safe_ckpt.TRUST_ENV_VAR, '1')
    warnings = []
    monkeypatch.setattr(safe_ckpt, '_warn', warnings.append)
    assert safe_torch_load(path)['ratio'] == fractions.Fraction(3, 4)
    assert len(warnings) == 1 and str(path) in warnings[0]
    model_file = tmp_path / 'model.pth'  # also through mmengine
    torch.save({'state_dict': toy_model().state_dict(), 'x': fractions.Fraction(1)},
               str(model_file))
    mm_checkpoint.load_checkpoint(toy_model(), str(model_file))

    # opt-in 2: allowlist just that global, loading stays weights-only
    monkeypatch.delenv(safe_ckpt.TRUST_ENV_VAR)
    allow_globals(['fractions.Fraction'])
    warnings.clear()
    assert safe_torch_load(path)['ratio'] == fractions.Fraction(3, 4)
    assert warnings == []


def test_trust_opt_in_does_not_hide_damage(tmp_path, monkeypatch):
    monkeypatch.setenv(safe_ckpt.TRUST_ENV_VAR, '1')
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    with pytest.raises(DamagedCheckpointError):
        safe_torch_load(path)


# --------------------------------------------------------------------------
# (d) damaged files
# --------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['half', 'head', 'empty', 'html', 'pkl_crc'])
def test_damaged_checkpoint_is_reported(trained, tmp_path, damage):
    good = (trained[0] / 'iter_4.pth').read_bytes()
    path = tmp_path / f'{damage}.pth'
    if damage == 'half':
        data = good[:len(good) // 2]
    elif damage == 'head':
        data = good[:10]
    elif damage == 'empty':
        data = b''
    elif damage == 'html':
        data = b'<html><body>502 Bad Gateway</body></html>'
    else:  # flip a byte inside data.pkl; the zip member CRC catches it
        with zipfile.ZipFile(io.BytesIO(good)) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith('data.pkl'))
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
        data = bytearray(good)
        data[offset] ^= 0xFF
        data = bytes(data)
    path.write_bytes(data)
    with pytest.raises(DamagedCheckpointError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert str(path) in message and 'damaged' in message
    assert 'download it again' in message
    # and the same through mmengine
    with pytest.raises(DamagedCheckpointError, match='damaged'):
        mm_checkpoint.load_checkpoint(toy_model(), str(path))


def test_truncated_legacy_format_is_reported(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(3), 'n': np.float64(1.5)}, str(path),
               _use_new_zipfile_serialization=False)
    assert safe_torch_load(path)['n'] == 1.5
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DamagedCheckpointError, match='legacy.pth'):
        safe_torch_load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='can not be found'):
        mm_checkpoint._load_checkpoint(str(tmp_path / 'nope.pth'))


# --------------------------------------------------------------------------
# numpy 1.x spellings and file objects
# --------------------------------------------------------------------------
def test_numpy1_spelling_loads(trained, tmp_path):
    """numpy 1.x pickles its helpers as numpy.core.multiarray.*."""
    src = trained[0] / 'iter_4.pth'
    dst = tmp_path / 'numpy1.pth'
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            zout.writestr(info, data)
    ckpt = safe_torch_load(dst)
    assert ckpt['meta']['iter'] == 4
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float32)


def test_file_object_and_http_scheme(trained, tmp_path, monkeypatch):
    data = (trained[0] / 'iter_4.pth').read_bytes()
    assert safe_torch_load(io.BytesIO(data))['meta']['iter'] == 4

    # http(s): download through torch.hub (faked), load safely from its cache
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    marker = tmp_path / 'PAYLOAD_RAN'
    evil_checkpoint(tmp_path / 'evil.pth', marker)
    served = {'good.pth': data, 'evil.pth': (tmp_path / 'evil.pth').read_bytes()}

    def fake_download(url, dst, hash_prefix=None, progress=True):
        with open(dst, 'wb') as f:
            f.write(served[url.rsplit('/', 1)[-1]])

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    ckpt = mm_checkpoint._load_checkpoint('https://example.invalid/good.pth')
    assert ckpt['meta']['iter'] == 4
    with pytest.raises(UnsafeCheckpointError, match='posix.system|nt.system') as info:
        mm_checkpoint._load_checkpoint('https://example.invalid/evil.pth')
    assert 'https://example.invalid/evil.pth' in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize('name', ['torchvision://resnet18', 'open-mmlab://resnet50_v1c',
                                  'mmcls://resnet18'])
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
