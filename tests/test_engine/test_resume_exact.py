"""Exact resume: a run killed after a checkpoint and resumed with ``--resume`` ends
bitwise where the uninterrupted run ends.

What makes it exact (see ``mmslora.RandomStateHook``):

* MMEngine restores weights, optimizer, schedulers, counters and the message hub, and
  ``IterBasedTrainLoop`` replays the trained batches through the sampler, so the data
  order is the same (``DefaultSampler`` shuffles with ``seed + epoch``; the replay
  crosses the epoch boundary here, 4 iterations per epoch, checkpoint at 5).
* MMEngine does not restore the global random generators. The hook saves them in the
  checkpoint and puts them back after the replay; it also keeps validation (which
  draws from ``torch`` when it creates its data-loader iterator) out of the training
  stream. Without it, stochastic depth (``drop_path_rate``, drawn from ``torch``) makes
  the resumed run drift (checked in ``test_toy_resume_needs_the_hook``).

Both runs are single-process on CPU with ``deterministic=True`` and the same thread
count, so every floating-point operation happens in the same order: the tolerance is
zero (``torch.equal``), for every tensor of the model and of the optimizer state.
"""

import io
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmslora  # noqa: F401
from mmslora.utils.checkpoint import safe_torch_load
from mmslora.utils.logs import latest_metrics
from mmslora_testing import ToyRegressor

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLS = 'configs/demo/effnet-lite0-mslora_fashion-mnist.py'
MAX_ITERS, CKPT_AT = 8, 5


def cls_options(root):
    # 32 images, batch 8: 4 iterations per epoch, so the run crosses an epoch and the
    # resume replays across the epoch boundary; validation at the checkpoint iteration.
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.dataset.indices=32',
        'val_dataloader.dataset.indices=64',
        'train_dataloader.batch_size=8',
        'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0',
        'test_dataloader.num_workers=0',
        f'train_cfg.max_iters={MAX_ITERS}',
        f'train_cfg.val_interval={CKPT_AT}',
        f'default_hooks.checkpoint.interval={CKPT_AT}',
        'default_hooks.checkpoint.max_keep_ckpts=3',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
        'randomness.deterministic=True',
        # stochastic depth in the frozen backbone: the forward draws from torch's RNG
        'model.backbone.backbone.drop_path_rate=0.2',
    ]


def train_cmd(work, root, *extra):
    return [
        sys.executable,
        'tools/train.py',
        CLS,
        '--work-dir',
        work,
        *extra,
        '--cfg-options',
        *cls_options(root),
    ]


def tool_env():
    # one thread per process: both runs fit the 2 cores side by side, and the thread
    # count (hence the order of floating-point reductions) is the same in all runs
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def wait_ok(proc, log_path, timeout=300):
    proc.wait(timeout=timeout)
    with open(log_path) as f:
        log = f.read()
    assert proc.returncode == 0, log[-5000:]
    return log


def test_killed_and_resumed_run_equals_uninterrupted_run(fashion_root, tmp_path):
    ref, work = str(tmp_path / 'reference'), str(tmp_path / 'killed')
    env = tool_env()
    ref_log = str(tmp_path / 'reference.log')
    reference = subprocess.Popen(
        train_cmd(ref, fashion_root),
        cwd=ROOT,
        env=env,
        stdout=open(ref_log, 'w'),
        stderr=subprocess.STDOUT,
    )
    victim_log = str(tmp_path / 'killed.log')
    victim = subprocess.Popen(
        train_cmd(work, fashion_root),
        cwd=ROOT,
        env=env,
        stdout=open(victim_log, 'w'),
        stderr=subprocess.STDOUT,
    )
    # CheckpointHook writes `last_checkpoint` after the checkpoint file is complete
    last = osp.join(work, 'last_checkpoint')
    deadline = time.time() + 300
    while not (osp.exists(last) and open(last).read().strip()):
        assert victim.poll() is None, open(victim_log).read()[-5000:]
        assert time.time() < deadline, 'no checkpoint within 300 s'
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert open(last).read().strip().endswith(f'iter_{CKPT_AT}.pth')
    assert not osp.exists(osp.join(work, f'iter_{MAX_ITERS}.pth'))

    resumed_log = str(tmp_path / 'resumed.log')
    resumed = subprocess.Popen(
        train_cmd(work, fashion_root, '--resume'),
        cwd=ROOT,
        env=env,
        stdout=open(resumed_log, 'w'),
        stderr=subprocess.STDOUT,
    )
    log = wait_ok(resumed, resumed_log)
    wait_ok(reference, ref_log)
    assert f'resumed epoch: 0, iter: {CKPT_AT}' in log
    assert f'Advance dataloader {CKPT_AT} steps' in log

    mine = safe_torch_load(osp.join(work, f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    theirs = safe_torch_load(osp.join(ref, f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    assert mine['meta']['iter'] == theirs['meta']['iter'] == MAX_ITERS
    assert mine['state_dict'].keys() == theirs['state_dict'].keys()
    different = [
        k for k, v in mine['state_dict'].items() if not torch.equal(v, theirs['state_dict'][k])
    ]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:5]}'
    # the adapters and the head trained (the comparison is not of untouched tensors)
    start = safe_torch_load(osp.join(work, f'iter_{CKPT_AT}.pth'), map_location='cpu')
    assert not torch.equal(
        start['state_dict']['head.fc.weight'], mine['state_dict']['head.fc.weight']
    )
    state_a, state_b = mine['optimizer']['state'], theirs['optimizer']['state']
    assert state_a.keys() == state_b.keys() and state_a
    for idx, slots in state_a.items():
        for name, value in slots.items():
            assert torch.equal(value, state_b[idx][name]), (idx, name)
    key = 'accuracy/top1'
    assert latest_metrics(work, key)[key] == latest_metrics(ref, key)[key]


# --------------------------------------------------------------------------
# In-process: why the hook is needed, and what it covers (a toy model, seconds)
# --------------------------------------------------------------------------
def dropout_model() -> ToyRegressor:
    """Draws from torch's RNG in the forward (dropout)."""
    return ToyRegressor(
        nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    )


class NoisyDataset(Dataset):
    """Augments with numpy's and Python's global RNG, as mmcv transforms do."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(12, 4, generator=gen), torch.randn(12, generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, idx):
        import random

        noise = float(np.random.randn()) * 0.1 + random.random() * 0.1
        return dict(inputs=self.x[idx] + noise, labels=self.y[idx])


class MAE(BaseMetric):
    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        self.results.append(
            float((torch.stack(data_samples) - torch.stack(data_batch['labels'])).abs().mean())
        )

    def compute_metrics(self, results):
        return dict(mae=float(np.mean(results)))


def toy_runner(work_dir, name, hook, by_epoch=False, **kwargs):
    # InfiniteSampler for the iteration-based loop (the subprocess test above covers
    # DefaultSampler, whose epoch restarts each cost MMEngine a 2 s sleep)
    sampler = 'DefaultSampler' if by_epoch else 'InfiniteSampler'
    loader = dict(
        dataset=NoisyDataset(),
        sampler=dict(type=sampler, shuffle=True),
        batch_size=4,
        num_workers=0,
    )
    if by_epoch:  # 3 iterations per epoch, checkpoint and validation every epoch
        train_cfg = dict(by_epoch=True, max_epochs=3, val_interval=1)
        checkpoint = dict(type='CheckpointHook', interval=1)
    else:  # checkpoint and validation every 3 iterations, save_best inside validation
        train_cfg = dict(by_epoch=False, max_iters=8, val_interval=3)
        checkpoint = dict(
            type='CheckpointHook', by_epoch=False, interval=3, save_best='toy/mae', rule='less'
        )
    return Runner(
        model=dropout_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=loader,
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        val_evaluator=dict(type=MAE),
        val_cfg=dict(),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        default_hooks=dict(checkpoint=checkpoint),
        custom_hooks=[dict(type='mmslora.RandomStateHook')] if hook else None,
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs,
    )


def toy_resume(tmp_path, hook, by_epoch=False):
    """(uninterrupted weights, resumed weights): 8 iterations (3 per epoch) against a
    resume from the first run's checkpoint at iteration 3 (or epoch 1), which is
    mid-training, right after a validation."""
    full = toy_runner(tmp_path / 'full', 'full', hook, by_epoch)
    full.train()
    ckpt = tmp_path / 'full' / ('epoch_1.pth' if by_epoch else 'iter_3.pth')
    resumed = toy_runner(
        tmp_path / 'resumed', 'resumed', hook, by_epoch, resume=True, load_from=str(ckpt)
    )
    resumed.train()
    assert resumed.iter == full.iter
    return full.model.state_dict(), resumed.model.state_dict()


@pytest.mark.parametrize('by_epoch', [False, True], ids=['iter-based', 'epoch-based'])
def test_toy_resume_needs_the_hook(tmp_path, by_epoch):
    full, resumed = toy_resume(tmp_path, hook=False, by_epoch=by_epoch)
    assert any(not torch.equal(v, resumed[k]) for k, v in full.items())


@pytest.mark.parametrize('by_epoch', [False, True], ids=['iter-based', 'epoch-based'])
def test_toy_resume_is_exact_with_the_hook(tmp_path, by_epoch):
    full, resumed = toy_resume(tmp_path, hook=True, by_epoch=by_epoch)
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key


class FirstRandomState(Hook):
    def __init__(self, record, name):
        self.record, self.name = record, name

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.record.setdefault(self.name, torch.get_rng_state())


def test_hook_leaves_a_plain_load_from_alone(tmp_path):
    """``load_from`` without resume starts a new run: the seed's random stream, not
    the checkpoint's."""
    toy_runner(tmp_path / 'full', 'full', True).train()
    first = {}
    for name, kwargs in [
        ('fresh', {}),
        ('loaded', dict(load_from=str(tmp_path / 'full' / 'iter_3.pth'))),
    ]:
        runner = toy_runner(tmp_path / name, name, True, **kwargs)
        runner.register_hook(FirstRandomState(first, name))
        runner.train()
    assert torch.equal(first['fresh'], first['loaded'])


def test_saved_random_state_needs_no_extra_globals(tmp_path):
    toy_runner(tmp_path, 'w', True).train()
    state = safe_torch_load(str(tmp_path / 'iter_3.pth'))['rng_state']
    assert set(state) >= {'python', 'numpy', 'torch'}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain weights-only, no allowlist
