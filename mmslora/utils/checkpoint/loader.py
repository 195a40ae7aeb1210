"""The safe loader: ``torch.load(..., weights_only=True)`` plus the allowlist.

:func:`safe_torch_load` loads a path or file object; the mmengine schemes
(:mod:`.schemes`) go through the same guarded load (:func:`load_guarded`). A
failure becomes :class:`~.diagnosis.DamagedCheckpointError` or
:class:`~.diagnosis.UnsafeCheckpointError` (:mod:`.diagnosis`); with
``MMSLORA_TRUST_CHECKPOINTS`` set, a refused file loads with full unpickling and a
warning instead.
"""
import logging
import os
from typing import Any, Callable, Optional

import torch

from .allowlist import TRUST_ENV_VAR, allowlisted_globals, trust_enabled
from .diagnosis import (damage_reason, damaged_error, describe_source, unsafe_error,
                        unsafe_globals_in, weights_only_refusal)


def warn(message: str) -> None:
    """Log ``message`` as a warning through mmengine's current logger."""
    try:
        from mmengine.logging import print_log
        print_log(message, logger='current', level=logging.WARNING)
    except Exception:  # pragma: no cover - mmengine always importable here
        logging.getLogger(__name__).warning(message)


def _with_allowlist(weights_only_load: Callable[[], Any]) -> Any:
    """Run ``weights_only_load`` (a ``torch.load(..., weights_only=True)``) with the
    allowlist added to torch's own.

    The one use of torch's allowlist API (``torch.serialization.safe_globals`` and
    ``get_safe_globals``, torch >= 2.5); a loader for older torch goes here.
    """
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
        return weights_only_load()


def load_guarded(source, name: Optional[str], safe_load: Callable[[], Any],
                 unsafe_load: Callable[[], Any]) -> Any:
    """Run ``safe_load`` under the allowlist; turn failures into clear errors.

    Args:
        source: the path or file object ``safe_load`` reads, examined on failure.
        name: how to call it in messages (None: from ``source``).
        safe_load: loads with ``weights_only=True``.
        unsafe_load: loads with ``weights_only=False``; only called for a refused
            file when ``MMSLORA_TRUST_CHECKPOINTS`` is set.
    """
    try:
        return _with_allowlist(safe_load)
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
            warn(f'{TRUST_ENV_VAR} is set: loading checkpoint {filename!r} with '
                 'full unpickling (weights_only=False) although it needs '
                 f'non-allowlisted globals {all_names or names or why}. This '
                 'can run arbitrary code; only do it for files you trust.')
            return unsafe_load()
        raise unsafe_error(filename, names, all_names, why) from err


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

    def safe():
        return torch.load(source, map_location=map_location, weights_only=True)

    def unsafe():
        if start is not None:
            source.seek(start)
        return torch.load(source, map_location=map_location, weights_only=False)

    return load_guarded(source, name, safe, unsafe)
