"""The safe loader: weights-only ``torch.load`` plus the allowlist.

:func:`safe_torch_load` loads a path or file object; the mmengine schemes
(:mod:`.schemes`) load through it. On torch >= 2.5 it is ``torch.load(...,
weights_only=True)`` with the allowlist added to torch's own
(``torch.serialization.safe_globals``); an older torch cannot extend its allowlist,
so there it is ``torch.load`` with the restricted unpickler of :mod:`.restricted`,
which allows the same globals. A failure becomes
:class:`~.diagnosis.DamagedCheckpointError` or
:class:`~.diagnosis.UnsafeCheckpointError` (:mod:`.diagnosis`); with
``MMSLORA_TRUST_CHECKPOINTS`` set, a refused file loads with full unpickling and a
warning instead.
"""

import logging
import os
from typing import Any, Callable, Optional

import torch

from . import restricted
from .allowlist import TRUST_ENV_VAR, allowlisted_globals, trust_enabled
from .diagnosis import (
    damage_reason,
    damaged_error,
    describe_source,
    unsafe_error,
    unsafe_globals_in,
    weights_only_refusal,
)

# torch.load's switch that turns every load weights-only; torch < 2.5 then refuses
# any pickle_module, the restricted unpickler included.
_TORCH_FORCE_WEIGHTS_ONLY = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'


def warn(message: str) -> None:
    """Log ``message`` as a warning through mmengine's current logger."""
    try:
        from mmengine.logging import print_log

        print_log(message, logger='current', level=logging.WARNING)
    except Exception:  # pragma: no cover - mmengine always importable here
        logging.getLogger(__name__).warning(message)


def _with_allowlist(load: Callable[..., Any]) -> Any:
    """Run ``load(**kwargs)``, a ``torch.load`` of the file given the keyword
    arguments that restrict it to the allowlist plus torch's own.

    torch >= 2.5: ``weights_only=True`` inside ``torch.serialization.safe_globals``.
    Older torch: ``pickle_module=`` :mod:`.restricted` (with ``weights_only=False``,
    which torch requires beside a ``pickle_module``; the restricted unpickler is what
    keeps the load safe, never a full unpickling).
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        if os.environ.get(_TORCH_FORCE_WEIGHTS_ONLY, '').lower() in ('1', 'y', 'yes', 'true'):
            raise RuntimeError(
                f'{_TORCH_FORCE_WEIGHTS_ONLY} is set, and on torch {torch.__version__} '
                "it makes torch.load refuse the restricted unpickler of mmslora's safe "
                'checkpoint loading (torch < 2.5 cannot extend its weights-only '
                f'allowlist). Unset {_TORCH_FORCE_WEIGHTS_ONLY}: mmslora loads '
                'checkpoints restricted to that allowlist plus its own anyway.'
            )
        return load(weights_only=False, pickle_module=restricted)
    # torch's safe_globals context removes its entries on exit, so skip names the
    # user already added globally (torch.serialization.add_safe_globals) or they
    # would be dropped after our load.
    present = set()
    for item in torch.serialization.get_safe_globals():
        if isinstance(item, tuple):
            present.add(item[1])
        else:
            present.add(f'{item.__module__}.{item.__qualname__}')
    entries = [e for e in allowlisted_globals() if e[1] not in present]
    with torch.serialization.safe_globals(entries):
        return load(weights_only=True)


def safe_torch_load(path_or_file, map_location=None, *, name: Optional[str] = None):
    """``torch.load(path_or_file, map_location, weights_only=True)`` plus the
    OpenMMLab allowlist.

    Args:
        path_or_file: a path or a seekable binary file object.
        map_location: as for :func:`torch.load`.
        name: how to call the file in messages (default: the path, or the file
            object's ``name``).

    Raises:
        UnsafeCheckpointError: the file needs a global that is not allowlisted
            (and ``MMSLORA_TRUST_CHECKPOINTS`` is not set).
        DamagedCheckpointError: the file is truncated/corrupted.
        FileNotFoundError: no such file.
    """
    source = path_or_file
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    start = None if isinstance(source, str) else source.tell()

    def load(**kwargs):
        if start is not None:
            source.seek(start)
        return torch.load(source, map_location=map_location, **kwargs)

    try:
        return _with_allowlist(load)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:
        filename = describe_source(source, name)
        reason = damage_reason(source, err)
        if reason:
            raise damaged_error(filename, reason) from err
        refusal = weights_only_refusal(err)
        if refusal is None:
            raise
        names, why = refusal
        all_names = unsafe_globals_in(source)
        if trust_enabled():
            warn(
                f'{TRUST_ENV_VAR} is set: loading checkpoint {filename!r} with '
                'full unpickling (weights_only=False) although it needs '
                f'non-allowlisted globals {all_names or names or why}. This '
                'can run arbitrary code; only do it for files you trust.'
            )
            return load(weights_only=False)
        raise unsafe_error(filename, names, all_names, why) from err
