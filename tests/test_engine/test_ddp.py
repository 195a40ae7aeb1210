"""Distributed training with tools/dist_train.sh: torchrun, 2 processes, CPU, gloo.

Checked against a single-process run of the same seed with the same total batch:

* DDP's reducer holds exactly the trainable tensors (adapters and head): the frozen
  backbone is not in its buckets and never gets a gradient, so only adapter and head
  gradients are all-reduced; ``find_unused_parameters=False`` works.
* Both ranks end with identical weights (the gradients were synchronised: their data
  shards differ).
* The result equals the single-process run's. ``DefaultSampler`` draws one
  permutation from ``seed + epoch`` whatever the world size and gives rank ``r`` the
  items ``r::2``, so step ``i`` of the 2 x 4 run sees the same 8 images as step ``i``
  of the 1 x 8 run; random flips are switched off, since each process draws its own
  flips. What differs is the order of float32 sums (two 4-image means averaged by the
  all-reduce vs one 8-image mean): the losses agree to 1e-5 relative, the trainable
  weights to ``atol=1e-6`` after 3 AdamW steps (measured: 3e-8), while the AdamW steps
  move them by up to ~1.9e-4 (the sum of the three learning rates), so the
  tolerance is over 100 times smaller than what training changed. The frozen backbone is
  bitwise equal.
"""

import json
import os
import os.path as osp
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLS = osp.join(ROOT, 'configs/demo/effnet-lite0-mslora_fashion-mnist.py')
ITERS = 3

PROBE = textwrap.dedent('''
    """Records, on each rank, what DDP wraps and how training went."""
    import json
    import os

    import torch
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS


    @HOOKS.register_module()
    class DDPProbeHook(Hook):

        def before_train(self, runner):
            wrapped = runner.model
            module = getattr(wrapped, 'module', wrapped)
            self.info = dict(
                wrapper=type(wrapped).__name__, rank=runner.rank,
                world_size=runner.world_size,
                trainable=[n for n, p in module.named_parameters() if p.requires_grad],
                trainable_bytes=sum(p.numel() * p.element_size()
                                    for p in module.parameters() if p.requires_grad))
            self.start = {n: p.detach().clone() for n, p in module.named_parameters()
                          if p.requires_grad}
            if hasattr(wrapped, '_get_ddp_logging_data'):
                data = wrapped._get_ddp_logging_data()
                self.info['reducer'] = {
                    k: data.get(k) for k in ('num_parameter_tensors',
                                             'total_parameter_size_bytes',
                                             'find_unused_parameters', 'backend_name')}

        def after_train(self, runner):
            module = getattr(runner.model, 'module', runner.model)
            self.info['frozen_with_grad'] = [
                n for n, p in module.named_parameters()
                if not p.requires_grad and p.grad is not None]
            params = dict(module.named_parameters())
            self.info['moved'] = max(float((params[n].detach() - p).abs().max())
                                     for n, p in self.start.items())
            self.info['losses'] = [float(x) for x in
                                   runner.message_hub.get_scalar('train/loss').data[0]]
            name = f'probe_rank{runner.rank}'
            with open(os.path.join(runner.work_dir, name + '.json'), 'w') as f:
                json.dump(self.info, f)
            torch.save(module.state_dict(), os.path.join(runner.work_dir, name + '.pth'))
''')

CONFIG = textwrap.dedent(f'''
    _base_ = [{CLS!r}]
    custom_imports = dict(imports=['mmslora', 'ddp_probe'], allow_failed_imports=False)
    custom_hooks = [dict(type='DDPProbeHook')]
    # no random flip: each process would draw its own
    train_dataloader = dict(dataset=dict(pipeline=[
        dict(type='mmslora.GrayToRGB'), dict(type='Resize', scale=(64, 64)),
        dict(type='PackInputs')]))
''')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def options(root, batch_size):
    return [
        '--cfg-options',
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.dataset.indices=32',
        'val_dataloader.dataset.indices=16',
        f'train_dataloader.batch_size={batch_size}',
        'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0',
        f'train_cfg.max_iters={ITERS}',
        f'train_cfg.val_interval={ITERS}',
        f'default_hooks.checkpoint.interval={ITERS}',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
        'randomness.deterministic=True',
        'env_cfg.dist_cfg.backend=gloo',
    ]


def finish(proc, log):
    proc.wait(timeout=400)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == 0, text[-6000:]
    return text


@pytest.fixture(scope='module')
def runs(fashion_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    (tmp / 'ddp_probe.py').write_text(PROBE)
    config = tmp / 'cfg.py'
    config.write_text(CONFIG)
    env = dict(
        os.environ,
        PYTHONPATH=f'{tmp}:{ROOT}',
        OMP_NUM_THREADS='1',
        PYTHON=sys.executable,
        PORT=str(free_port()),
    )
    ddp_dir, single_dir = tmp / 'ddp', tmp / 'single'
    ddp = subprocess.Popen(
        [
            'bash',
            osp.join(ROOT, 'tools/dist_train.sh'),
            str(config),
            '2',
            '--work-dir',
            str(ddp_dir),
            *options(fashion_root, 4),
        ],
        env=env,
        cwd=str(tmp),
        stdout=open(tmp / 'ddp.log', 'w'),
        stderr=subprocess.STDOUT,
    )
    single = subprocess.Popen(
        [
            sys.executable,
            osp.join(ROOT, 'tools/train.py'),
            str(config),
            '--work-dir',
            str(single_dir),
            *options(fashion_root, 8),
        ],
        env=env,
        cwd=ROOT,
        stdout=open(tmp / 'single.log', 'w'),
        stderr=subprocess.STDOUT,
    )
    log = finish(ddp, tmp / 'ddp.log')
    finish(single, tmp / 'single.log')

    def load(work, rank):
        with open(work / f'probe_rank{rank}.json') as f:
            info = json.load(f)
        return info, torch.load(work / f'probe_rank{rank}.pth', weights_only=True)

    return dict(log=log, ranks=[load(ddp_dir, 0), load(ddp_dir, 1)], single=load(single_dir, 0))


def test_dist_train_runs_two_cpu_processes(runs):
    for rank, (info, _) in enumerate(runs['ranks']):
        assert (info['wrapper'], info['rank'], info['world_size']) == (
            'MMDistributedDataParallel',
            rank,
            2,
        )
        assert len(info['losses']) == ITERS
    assert runs['single'][0]['wrapper'] != 'MMDistributedDataParallel'


def test_only_adapters_and_head_are_synchronised(runs):
    for info, _ in runs['ranks']:
        trainable = info['trainable']
        assert trainable and all(n.startswith(('backbone.adapters.', 'head.')) for n in trainable)
        assert any(n.startswith('head.') for n in trainable)
        # DDP's reducer buckets hold exactly these tensors, nothing of the backbone
        reducer = info['reducer']
        assert reducer['backend_name'] == 'gloo'
        assert reducer['num_parameter_tensors'] == len(trainable)
        assert reducer['total_parameter_size_bytes'] == info['trainable_bytes']
        assert not reducer['find_unused_parameters']
        assert info['frozen_with_grad'] == []


def test_ranks_end_identical(runs):
    (_, rank0), (_, rank1) = runs['ranks']
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(v, rank1[k]) for k, v in rank0.items())


def test_ddp_matches_single_process_with_the_same_total_batch(runs):
    (info0, ddp), (info1, _) = runs['ranks']
    single_info, single = runs['single']
    # each rank logs the loss of its own 4 images; their mean is the 8-image loss
    for step, want in enumerate(single_info['losses']):
        got = (info0['losses'][step] + info1['losses'][step]) / 2
        assert got == pytest.approx(want, rel=1e-5), step
    trainable = set(info0['trainable'])
    for key, value in single.items():
        if key in trainable:
            torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-6, msg=key)
        else:  # frozen backbone (and buffers): bitwise
            assert torch.equal(ddp[key], value), key
    # the tolerance is small against what training changed
    assert info0['moved'] > 100 * 1e-6 and single_info['moved'] > 100 * 1e-6
