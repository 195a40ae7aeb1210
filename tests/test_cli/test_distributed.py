"""mmslora.cli.distributed: CPU-only DDP for --launcher pytorch."""

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config

from mmslora.cli import init_cpu_distributed


def test_without_a_launcher_nothing_changes():
    cfg = Config(dict(launcher='none'))
    assert init_cpu_distributed(cfg) is False
    assert 'env_cfg' not in cfg and 'model_wrapper_cfg' not in cfg


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU-only machines')
def test_cpu_ddp_config(monkeypatch):
    monkeypatch.setattr(dist, 'is_initialized', lambda: True)  # no process group here
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert init_cpu_distributed(cfg) is True
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel',
        device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=False,
    )
