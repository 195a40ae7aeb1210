"""Safe checkpoint loading for mmengine under torch >= 2.6.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that
means ``weights_only=True``, and the checkpoints mmengine's own ``Runner`` writes no
longer load: the message hub holds ``HistoryBuffer`` objects (numpy arrays inside)
and the meta holds numpy scalars (``eta``, ``best_score``). Worse, mmengine's
``http(s)://`` loader goes through ``torch.hub.load_state_dict_from_url``, which
still defaults to ``weights_only=False``: a downloaded checkpoint may run code.

This module loads with ``weights_only=True`` plus an explicit allowlist of the few
extra globals OpenMMLab checkpoints contain (:data:`MM_CHECKPOINT_GLOBALS`), and
registers that loader with mmengine's ``CheckpointLoader`` (``import mmslora`` does it
via :func:`install_safe_checkpoint_loading`), so ``load_checkpoint``,
``_load_checkpoint``, ``Runner(load_from=..., resume=...)``, inferencers and
``init_cfg=dict(type='Pretrained', ...)`` all use it.

A checkpoint that needs any other global is refused with
:class:`UnsafeCheckpointError` naming the global(s) and the file. For a file you
trust there are two documented opt-ins, never a silent fallback:

* ``mmslora.utils.checkpoint.allow_globals(['pkg.module.MyClass'])`` adds exactly
  those globals to the allowlist (still ``weights_only=True``);
* the environment variable ``MMSLORA_TRUST_CHECKPOINTS=1`` loads refused files with
  full unpickling (``weights_only=False``) and logs a warning naming the file.

A truncated or corrupted file raises :class:`DamagedCheckpointError` naming it.
"""
import importlib
import io
import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    'MM_CHECKPOINT_GLOBALS', 'TRUST_ENV_VAR', 'UnsafeCheckpointError',
    'DamagedCheckpointError', 'safe_torch_load', 'allow_globals',
    'allowed_global_names', 'install_safe_checkpoint_loading'
]

#: Environment variable that lets refused (but trusted) files load with
#: ``weights_only=False``. Accepted "on" values: 1, true, yes, on.
TRUST_ENV_VAR = 'MMSLORA_TRUST_CHECKPOINTS'
_TRUE_VALUES = ('1', 'true', 'yes', 'on')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a global that is not on the allowlist.

    Attributes:
        filename (str): The file (or URL / description) that was refused.
        globals (list[str]): The offending global(s), e.g. ``['posix.system']``.
    """

    def __init__(self, message: str, filename: str, globals: List[str]):
        super().__init__(message)
        self.filename = filename
        self.globals = list(globals)


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or not a torch checkpoint.

    Attributes:
        filename (str): The damaged file.
        reason (str): What is wrong with it.
    """

    def __init__(self, message: str, filename: str, reason: str):
        super().__init__(message)
        self.filename = filename
        self.reason = reason


# --------------------------------------------------------------------------
# The allowlist
# --------------------------------------------------------------------------
def _numpy_multiarray():
    """numpy's C ``multiarray`` module: ``numpy._core`` (2.x) or ``numpy.core`` (1.x)."""
    try:
        return importlib.import_module('numpy._core.multiarray')
    except ImportError:  # numpy < 1.26 has no numpy._core
        return importlib.import_module('numpy.core.multiarray')


# getattr is only ever needed for HistoryBuffer's pickled statistics methods:
# ``HistoryBuffer.__getstate__`` stores ``{'min': HistoryBuffer.min, ...}`` and
# pickle protocol 2 (torch.save's default) writes a method of a class as
# ``getattr(HistoryBuffer, 'min')``. Rather than allowlisting the real getattr
# (which can reach any attribute of any loaded object), ``builtins.getattr``
# resolves to this function, which only returns those four default methods.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed: only the default '
        f'HistoryBuffer statistics methods {_HISTORY_BUFFER_METHODS} are')


# Plain fixed-size numeric/bool dtypes (by C type char, so the C aliases such as
# long/longlong that both mean int64 are covered). numpy arrays and scalars are
# pickled as ``numpy.dtype(code, ...)`` followed by a BUILD of that dtype, and a
# BUILD is only allowed for allowlisted types, so the dtype *classes* must be on
# the list (numpy >= 1.25: ``numpy.dtypes.Float64DType`` etc.; older numpy: the
# ``numpy.dtype[float64]`` classes -- ``type(np.dtype(c))`` gives either).
# Object, string, void/structured, datetime, complex and longdouble dtypes are
# deliberately left out.
_NUMPY_DTYPE_CODES = '?bBhHiIlLqQefd'


def _build_mm_checkpoint_globals() -> List[Tuple[Any, str]]:
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = _numpy_multiarray()
    entries: List[Tuple[Any, str]] = [
        # MessageHub.state_dict()['log_scalars'] maps names to HistoryBuffers.
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        # ... whose pickled __dict__ holds its statistics methods, see above.
        (_history_buffer_getattr, 'builtins.getattr'),
        # numpy arrays (HistoryBuffer._log_history / _count_history) are pickled
        # as _reconstruct(ndarray, (0,), b'b') + BUILD(ndarray state).
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
    ]
    # numpy 2.x writes numpy._core.multiarray.*, numpy 1.x numpy.core.multiarray.*;
    # both spellings resolve to the functions of the installed numpy.
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        # _reconstruct: creates the empty array that BUILD then fills.
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        # scalar: numpy scalars (meta['eta'], meta['hook_msgs']['best_score'],
        # metric values) are pickled as scalar(dtype, raw_bytes).
        entries.append((multiarray.scalar, f'{module}.scalar'))
    seen = set()
    for code in _NUMPY_DTYPE_CODES:
        cls = type(np.dtype(code))
        if cls not in seen:
            seen.add(cls)
            entries.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    return entries


#: ``(object, 'dotted.path')`` pairs added to torch's own weights-only allowlist
#: (which already covers tensors, storages, ``collections.OrderedDict``,
#: ``collections.Counter`` (MultiStepLR milestones), ``_codecs.encode`` and the
#: Python builtins types).
MM_CHECKPOINT_GLOBALS: List[Tuple[Any, str]] = _build_mm_checkpoint_globals()

# Added by the user through allow_globals().
_extra_globals: List[Tuple[Any, str]] = []


def _resolve_dotted(path: str) -> Any:
    """Import ``'pkg.module.Class.attr'`` (the longest importable module prefix)."""
    parts = path.split('.')
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ValueError(f'cannot import the global {path!r}')


def allow_globals(objs: Iterable[Union[str, Callable, Tuple[Callable, str]]]) -> None:
    """Trust extra globals for every later safe load in this process.

    Only do this for classes/functions you have checked and for files whose
    source you trust: an allowlisted global can be called while unpickling.

    Args:
        objs: each a class/function, a dotted path string as named in an
            :class:`UnsafeCheckpointError` (``'my_pkg.metrics.Score'``; it is
            imported), or a ``(object, 'dotted.path')`` pair when the path in
            the file differs from the object's own ``__module__.__qualname__``.
    """
    for obj in objs:
        if isinstance(obj, str):
            entry = (_resolve_dotted(obj), obj)
        elif isinstance(obj, tuple):
            if len(obj) != 2 or not isinstance(obj[1], str):
                raise TypeError(f'expected (object, "dotted.path"), got {obj!r}')
            entry = obj
        else:
            entry = (obj, f'{obj.__module__}.{obj.__qualname__}')
        if entry not in _extra_globals:
            _extra_globals.append(entry)


def allowed_global_names() -> List[str]:
    """The dotted names this module adds to torch's weights-only allowlist."""
    return [name for _, name in MM_CHECKPOINT_GLOBALS + _extra_globals]


def _context_globals() -> List[Tuple[Any, str]]:
    # torch's safe_globals context removes its entries on exit, so skip names the
    # user already added globally (torch.serialization.add_safe_globals) or they
    # would be dropped after our load.
    present = set()
    for item in torch.serialization.get_safe_globals():
        if isinstance(item, tuple):
            present.add(item[1])
        else:
            present.add(f'{item.__module__}.{item.__qualname__}')
    return [e for e in MM_CHECKPOINT_GLOBALS + _extra_globals if e[1] not in present]


# --------------------------------------------------------------------------
# Failure diagnosis
# --------------------------------------------------------------------------
_ANSI = re.compile(r'\x1b\[[0-9;]*m')
_GLOBAL_PATTERNS = (
    re.compile(r'GLOBAL (\S+) was not an allowed global by default'),
    re.compile(r'unsupported GLOBAL (\S+) whose module'),
)
_WEIGHTS_ONLY_REASONS = re.compile(
    r'(Trying to call reduce for unrecognized function.*|'
    r'Can only (?:create|build) .*|Trying to load unsupported GLOBAL .*|'
    r'Unsupported global: .*|Unsupported operand .*)')
_BUILD_CLASS = re.compile(r"Can only build .* but got <class '([^']+)'>")
_TORCH_ZIP_MAGIC = b'PK\x03\x04'


def _trust_enabled() -> bool:
    return os.environ.get(TRUST_ENV_VAR, '').strip().lower() in _TRUE_VALUES


def _weights_only_refusal(err: BaseException) -> Optional[Tuple[List[str], str]]:
    """``(offending globals, reason)`` if ``err`` is torch's weights-only refusal."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    message = _ANSI.sub('', str(err))
    if 'Weights only load failed' not in message:
        return None
    names = []
    for pattern in _GLOBAL_PATTERNS:
        for found in pattern.findall(message):
            found = found.rstrip('.')
            # torch strips 'builtins.' from the names it reports
            names.append(found if '.' in found else f'builtins.{found}')
    # BUILD of an instance whose class is not allowlisted (e.g. a numpy dtype
    # class): "Can only build ... but got <class 'pkg.Cls'>"
    names += _BUILD_CLASS.findall(message)
    # torch's own text: "... WeightsUnpickler error: <reason>\n\nCheck the docs"
    reason = message.split('WeightsUnpickler error:', 1)[-1]
    reason = reason.split('Check the documentation of torch.load', 1)[0]
    reason = ' '.join(reason.split())
    if not reason or reason.startswith('Weights only load failed'):
        match = _WEIGHTS_ONLY_REASONS.search(message)
        reason = match.group(0).strip() if match else 'unsupported content'
    return names, reason


def _read_head_and_size(source) -> Tuple[bytes, int]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as f:
            return f.read(8), os.fstat(f.fileno()).st_size
    pos = source.tell()
    try:
        source.seek(0, io.SEEK_END)
        size = source.tell()
        source.seek(0)
        return source.read(8), size
    finally:
        source.seek(pos)


def _damage_reason(source) -> Optional[str]:
    """Why ``source`` is not an intact checkpoint, or None if it looks intact.

    Only run after a load failed, so the full CRC check costs nothing on success.
    """
    try:
        head, size = _read_head_and_size(source)
    except (OSError, ValueError, AttributeError):
        return None  # unreadable/unseekable: let the original error speak
    if size == 0:
        return 'the file is empty'
    if head.startswith(_TORCH_ZIP_MAGIC):
        pos = None if isinstance(source, (str, os.PathLike)) else source.tell()
        try:
            with zipfile.ZipFile(source) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f'archive member {bad!r} fails its CRC check'
            return None
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            return ('it starts like a zip archive but is truncated or '
                    f'corrupted ({exc})')
        except Exception as exc:  # zlib.error and friends
            return f'it is a corrupted zip archive ({type(exc).__name__}: {exc})'
        finally:
            if pos is not None:
                source.seek(pos)
    if head[:1] == b'\x80':  # a legacy (torch < 1.6) pickle-based checkpoint
        return None  # decided from the load error, see _legacy_damage
    return (f'it is neither a zip-based nor a legacy torch checkpoint '
            f'(starts with {head!r}; an HTML error page or a partial download?)')


_LEGACY_DAMAGE = re.compile(
    r'Ran out of input|pickle data was truncated|unpickling stack underflow|'
    r'invalid load key|EOF|truncated|unexpected end', re.IGNORECASE)


def _legacy_damage(source, err: BaseException) -> Optional[str]:
    try:
        head, _ = _read_head_and_size(source)
    except (OSError, ValueError, AttributeError):
        return None
    if head[:1] != b'\x80':
        return None
    refusal = _weights_only_refusal(err)
    if refusal is not None and refusal[0]:
        return None  # an intact file that names a refused global
    if isinstance(err, EOFError) or _LEGACY_DAMAGE.search(str(err)):
        return f'the legacy-format pickle ends early or is garbled ({_short(err)})'
    return None


def _short(err: BaseException) -> str:
    text = _ANSI.sub('', str(err)).strip().splitlines()
    return f'{type(err).__name__}: {text[-1]}' if text else type(err).__name__


def _describe(source, name: Optional[str]) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, 'name', None) or f'<{type(source).__name__} object>'


def _unsafe_message(filename: str, names: List[str], all_names: List[str],
                    reason: str) -> str:
    if names:
        what = ('it needs the global ' if len(names) == 1 else
                'it needs the globals ') + ', '.join(f'`{n}`' for n in names)
        what += (", which is not on mmslora's allowlist of types found in "
                 'OpenMMLab checkpoints')
    else:
        what = f'weights-only unpickling refused it ({reason})'
    lines = [
        f'Refusing to load checkpoint {filename!r}: {what}. Unpickling an '
        'arbitrary global can run arbitrary code, so nothing was loaded.'
    ]
    if all_names and all_names != names:
        lines.append('All non-allowlisted globals in this file: ' +
                     ', '.join(all_names) + '.')
    suggest = all_names or names
    lines.append('Only if you trust where this file came from, either')
    if suggest:
        lines.append('  - allow exactly these globals before loading: '
                     '`mmslora.utils.checkpoint.allow_globals('
                     f'{suggest!r})`, or')
    lines.append(f'  - set the environment variable {TRUST_ENV_VAR}=1 to load '
                 'refused files with full unpickling (torch.load(..., '
                 'weights_only=False)); a warning names each such file.')
    return '\n'.join(lines)


def _all_unsafe_globals(source) -> List[str]:
    """Every global in the file that neither torch nor we allow (best effort)."""
    try:
        pos = None if isinstance(source, (str, os.PathLike)) else source.tell()
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
        finally:
            if pos is not None:
                source.seek(pos)
    except Exception:
        return []
    ours = set(allowed_global_names())
    return [n for n in found if n not in ours]


def _warn(message: str) -> None:
    try:
        from mmengine.logging import print_log
        print_log(message, logger='current', level=logging.WARNING)
    except Exception:  # pragma: no cover - mmengine always importable here
        logging.getLogger(__name__).warning(message)


def _load_guarded(source, name: Optional[str], safe_load: Callable[[], Any],
                  unsafe_load: Callable[[], Any]) -> Any:
    """Run ``safe_load`` under the allowlist; turn failures into clear errors."""
    try:
        with torch.serialization.safe_globals(_context_globals()):
            return safe_load()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:
        filename = _describe(source, name)
        reason = _damage_reason(source) or _legacy_damage(source, err)
        if reason:
            raise DamagedCheckpointError(
                f'Checkpoint {filename!r} is damaged or incomplete: {reason}. '
                'It cannot be loaded. If it was downloaded, delete it and '
                'download it again (an interrupted download leaves a truncated '
                'file); if a training run wrote it, re-save it or use another '
                'checkpoint of that run.', filename, reason) from err
        refusal = _weights_only_refusal(err)
        if refusal is None:
            raise
        names, why = refusal
        all_names = _all_unsafe_globals(source)
        if _trust_enabled():
            _warn(f'{TRUST_ENV_VAR} is set: loading checkpoint {filename!r} with '
                  'full unpickling (weights_only=False) although it needs '
                  f'non-allowlisted globals {all_names or names or why}. This '
                  'can run arbitrary code; only do it for files you trust.')
            return unsafe_load()
        raise UnsafeCheckpointError(
            _unsafe_message(filename, names, all_names, why), filename,
            names or all_names) from err


# --------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------
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

    return _load_guarded(source, name, safe, unsafe)


# --------------------------------------------------------------------------
# mmengine CheckpointLoader schemes
# --------------------------------------------------------------------------
# The functions are named ``load_from_*`` like mmengine's because
# CheckpointLoader logs ``name[10:]`` ("Loads checkpoint by local backend").
def load_from_local(filename, map_location=None):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_local``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


def _hub_cached_file(url: str, model_dir: Optional[str]) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    from urllib.parse import urlparse
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def _safe_load_url(url, model_dir=None, map_location=None, progress=True):
    cached = _hub_cached_file(url, model_dir)

    def safe():
        return torch.hub.load_state_dict_from_url(
            url, model_dir=model_dir, map_location=map_location,
            progress=progress, weights_only=True)

    def unsafe():
        return torch.hub.load_state_dict_from_url(
            url, model_dir=model_dir, map_location=map_location,
            progress=progress, weights_only=False)

    # Diagnose failures on the downloaded file, but name the URL too.
    return _load_guarded(cached, f'{cached} (downloaded from {url})', safe, unsafe)


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=os.isatty(0)):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_http``.

    Same download/cache behaviour (torch hub cache; rank 0 downloads first in
    distributed runs), but the file is loaded weights-only with the allowlist.
    """
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = _safe_load_url(filename, model_dir, map_location, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _safe_load_url(filename, model_dir, map_location,
                                        progress)
    return checkpoint


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """Safe replacement for ``mmengine.runner.checkpoint.load_from_ceph``."""
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return safe_torch_load(buffer, map_location=map_location, name=filename)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://name`` (or deprecated ``modelzoo://``) via the safe http loader."""
    from mmengine.runner import checkpoint as mm_ckpt
    if filename.startswith('modelzoo://'):
        _warn('The URL scheme of "modelzoo://" is deprecated, please use '
              '"torchvision://" instead')
        model_name = filename[len('modelzoo://'):]
    else:
        model_name = filename[len('torchvision://'):]
    url = mm_ckpt.get_torchvision_models()[model_name]
    return load_from_http(url, map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://name`` / ``openmmlab://name`` via the safe loaders."""
    from mmengine.runner import checkpoint as mm_ckpt
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    model_name = filename[len(prefix):]
    deprecated = mm_ckpt.get_deprecated_model_names()
    if model_name in deprecated:
        _warn(f'{prefix}{model_name} is deprecated in favor of '
              f'{prefix}{deprecated[model_name]}')
        model_name = deprecated[model_name]
    model_url = mm_ckpt.get_external_models()[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_from_http(model_url, map_location=map_location)
    return load_from_local(
        osp.join(mm_ckpt._get_mmengine_home(), model_url), map_location)


def load_from_mmcls(filename, map_location=None):
    """``mmcls://name`` via the safe http loader."""
    from mmengine.runner import checkpoint as mm_ckpt
    model_name = filename[len('mmcls://'):]
    checkpoint = load_from_http(
        mm_ckpt.get_mmcls_models()[model_name], map_location=map_location)
    return mm_ckpt._process_mmcls_checkpoint(checkpoint)


_SCHEMES: Dict[Any, Callable] = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
}


def install_safe_checkpoint_loading() -> None:
    """Make mmengine's ``CheckpointLoader`` load through :func:`safe_torch_load`.

    Replaces the local-file, http(s), s3/petrel, torchvision/modelzoo,
    open-mmlab and mmcls schemes (every mmengine scheme that reads a torch file,
    except ``pavi://``, whose plain ``torch.load`` is weights-only by default on
    torch >= 2.6 and so refuses rather than runs anything). Idempotent; other
    registered schemes (e.g. ``efficientnet-lite0://``) are left alone.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    schemes = CheckpointLoader._schemes
    for prefixes, loader in _SCHEMES.items():
        for prefix in (prefixes if isinstance(prefixes, tuple) else (prefixes, )):
            if schemes.get(prefix) is not loader:
                CheckpointLoader.register_scheme(prefixes=prefix, loader=loader,
                                                 force=True)
