"""Distributed runs of tools/train.py and tools/test.py on machines without GPUs."""

import torch
from mmengine.config import Config


def init_cpu_distributed(cfg: Config) -> bool:
    """Let ``--launcher pytorch`` run on a machine without GPUs (CPU DDP over gloo).

    MMEngine's launcher setup calls ``torch.cuda.set_device`` and wraps the model in
    DDP with ``device_ids=[LOCAL_RANK]``; both fail without CUDA. On such a machine
    this initialises the process group itself (MMEngine then skips its own
    ``init_dist``), with ``env_cfg.dist_cfg`` (``backend='nccl'``, which needs GPUs,
    becomes ``'gloo'``), and sets ``model_wrapper_cfg`` to CPU DDP
    (``device_ids=None``). Returns whether it did; with CUDA, or without a launcher,
    it does nothing.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    import torch.distributed as dist

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
    env_cfg['dist_cfg'] = dist_cfg
    if not dist.is_initialized():
        kwargs = dict(dist_cfg)
        if 'timeout' in kwargs and not hasattr(kwargs['timeout'], 'total_seconds'):
            import datetime

            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        dist.init_process_group(**kwargs)
    if cfg.get('runner_type') is None:  # FlexibleRunner strategies wrap by themselves
        wrapper = dict(cfg.get('model_wrapper_cfg') or {})
        wrapper.setdefault('type', 'MMDistributedDataParallel')
        wrapper['device_ids'] = None
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
    return True
