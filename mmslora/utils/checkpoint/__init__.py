"""Safe checkpoint loading for mmengine, on every torch from 2.1 on.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that
means ``weights_only=True``, and the checkpoints mmengine's own ``Runner`` writes no
longer load: the message hub holds ``HistoryBuffer`` objects (numpy arrays inside)
and the meta holds numpy scalars (``eta``, ``best_score``). Before torch 2.6 it
means full unpickling: any checkpoint file can run code on load. Worse, mmengine's
``http(s)://`` loader goes through ``torch.hub.load_state_dict_from_url``, which
still defaults to ``weights_only=False``: a downloaded checkpoint may run code.

This package loads with ``weights_only=True`` plus an explicit allowlist of the few
extra globals OpenMMLab checkpoints contain (:data:`MM_CHECKPOINT_GLOBALS`), and
registers that loader with mmengine's ``CheckpointLoader`` (``import mmslora`` does it
via :func:`install_safe_checkpoint_loading`), so ``load_checkpoint``,
``_load_checkpoint``, ``Runner(load_from=..., resume=...)``, inferencers and
``init_cfg=dict(type='Pretrained', ...)`` all use it. On a torch that cannot extend
its weights-only allowlist (< 2.5, e.g. the torch 2.1 of OpenMMLab's prebuilt mmcv
wheels) the same globals are allowed by a restricted unpickler instead
(:mod:`.restricted`), with the same refusals and opt-ins.

A checkpoint that needs any other global is refused with
:class:`UnsafeCheckpointError` naming the global(s) and the file. For a file you
trust there are two documented opt-ins, never a silent fallback:

* ``mmslora.utils.checkpoint.allow_globals(['pkg.module.MyClass'])`` adds exactly
  those globals to the allowlist (still ``weights_only=True``);
* the environment variable ``MMSLORA_TRUST_CHECKPOINTS=1`` loads refused files with
  full unpickling (``weights_only=False``) and logs a warning naming the file.

A truncated or corrupted file raises :class:`DamagedCheckpointError` naming it.

Modules: :mod:`.allowlist` (what is trusted), :mod:`.diagnosis` (why a load failed,
the errors), :mod:`.loader` (:func:`safe_torch_load`), :mod:`.restricted` (the
unpickler of torch < 2.5), :mod:`.schemes` (mmengine's ``CheckpointLoader``
schemes).
"""

from .allowlist import MM_CHECKPOINT_GLOBALS, TRUST_ENV_VAR, allow_globals, allowed_global_names
from .diagnosis import DamagedCheckpointError, UnsafeCheckpointError
from .loader import safe_torch_load
from .schemes import (
    install_safe_checkpoint_loading,
    load_from_ceph,
    load_from_http,
    load_from_local,
    load_from_mmcls,
    load_from_openmmlab,
    load_from_torchvision,
)

__all__ = [
    'MM_CHECKPOINT_GLOBALS',
    'TRUST_ENV_VAR',
    'UnsafeCheckpointError',
    'DamagedCheckpointError',
    'safe_torch_load',
    'allow_globals',
    'allowed_global_names',
    'install_safe_checkpoint_loading',
    'load_from_local',
    'load_from_http',
    'load_from_ceph',
    'load_from_torchvision',
    'load_from_openmmlab',
    'load_from_mmcls',
]
