"""What safe checkpoint loading trusts.

* :func:`torch_default_globals`: torch's own weights-only allowlist (tensors,
  storages, dtypes and their rebuild functions), as torch >= 2.6 has it, resolved on
  the installed torch; the restricted unpickler of :mod:`.restricted` allows it on a
  torch without ``torch.serialization.safe_globals`` (< 2.5);
* :data:`MM_CHECKPOINT_GLOBALS`: the few globals OpenMMLab checkpoints contain
  beyond torch's own weights-only allowlist (mmengine's ``HistoryBuffer``, numpy
  arrays, scalars and plain dtypes), with ``builtins.getattr`` resolving to a guard
  that only reaches ``HistoryBuffer``'s statistics methods;
* :func:`allow_globals`: exactly the globals a user adds for files they trust (still
  ``weights_only=True``);
* :data:`TRUST_ENV_VAR`: the environment variable that loads refused files with full
  unpickling (``weights_only=False``), never a silent fallback.
"""

import _compat_pickle
import functools
import importlib
import os
import pickle
from typing import Any, Callable, Dict, Iterable, List, Tuple, Union

import numpy as np
import torch

#: Environment variable that lets refused (but trusted) files load with
#: ``weights_only=False``. Accepted "on" values: 1, true, yes, on.
TRUST_ENV_VAR = 'MMSLORA_TRUST_CHECKPOINTS'
_TRUE_VALUES = ('1', 'true', 'yes', 'on')


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


class NotAllowlisted(pickle.UnpicklingError):
    """Raised while unpickling when the file reaches outside the allowlist.

    Attributes:
        globals (list[str]): the refused global, e.g. ``['posix.system']``; empty
            when the refusal is not about a global (a guarded ``getattr``).
    """

    def __init__(self, message: str, globals: List[str]):
        super().__init__(message)
        self.globals = list(globals)


def _history_buffer_getattr(obj, name):
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise NotAllowlisted(
        f'getattr({obj!r}, {name!r}) is not allowed: only the default '
        f'HistoryBuffer statistics methods {_HISTORY_BUFFER_METHODS} are',
        [],
    )


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


# torch's default weights-only allowlist as torch 2.14 has it (its
# _weights_only_unpickler._get_allowed_globals), by dotted name, beside the dtypes,
# qschemes, tensor and storage classes that torch_default_globals() enumerates. Older
# torch allows less by default (torch 2.1: no bytes, set or Counter, so no Runner
# checkpoint), and the same guarantees on every torch mean the same list; names the
# installed torch lacks (torch 2.1 has no _rebuild_tensor_v3) are skipped.
_TORCH_DEFAULT_NAMES = (
    '_codecs.encode',  # bytes, in pickle protocol 2
    'builtins.bytearray',
    'builtins.complex',
    'builtins.set',
    'collections.Counter',
    'collections.OrderedDict',
    'torch.Size',
    'torch.Tensor',
    'torch.device',
    'torch.nn.parameter.Parameter',
    'torch.serialization._get_layout',
    'torch._tensor._rebuild_from_type_v2',
) + tuple(
    f'torch._utils._rebuild_{kind}'
    for kind in (
        'device_tensor_from_cpu_tensor',
        'device_tensor_from_numpy',
        'meta_tensor_no_storage',
        'nested_tensor',
        'parameter',
        'parameter_with_state',
        'qtensor',
        'sparse_tensor',
        'tensor',
        'tensor_v2',
        'tensor_v3',
        'wrapper_subclass',
    )
)


@functools.lru_cache(maxsize=1)
def torch_default_globals() -> Dict[str, Any]:
    """``{'dotted.path': object}`` of torch's own weights-only allowlist (torch
    2.14's), resolved on the installed torch."""
    found = {}
    for path in _TORCH_DEFAULT_NAMES:
        try:
            found[path] = _resolve_dotted(path)
        except ValueError:
            continue  # not in this torch
    for value in vars(torch).values():
        if isinstance(value, (torch.dtype, torch.qscheme)):
            found[str(value)] = value  # 'torch.float32', 'torch.per_tensor_affine'
    for cls in (*torch._tensor_classes, *torch._storage_classes):
        found[f'{cls.__module__}.{cls.__name__}'] = cls
    return found


def global_name(module: str, name: str) -> str:
    """The dotted name of the global ``module``/``name`` as pickle writes it, with
    Python 2 spellings (``__builtin__``, written by pickle protocol 2) mapped to
    Python 3's as pickle itself does."""
    module, name = _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
    )
    return f'{module}.{name}'


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


def allowlisted_globals() -> List[Tuple[Any, str]]:
    """The ``(object, 'dotted.path')`` pairs added to torch's weights-only allowlist:
    :data:`MM_CHECKPOINT_GLOBALS` and those given to :func:`allow_globals`."""
    return MM_CHECKPOINT_GLOBALS + _extra_globals


def allowed_global_names() -> List[str]:
    """The dotted names this module adds to torch's weights-only allowlist."""
    return [name for _, name in allowlisted_globals()]


def trust_enabled() -> bool:
    """Whether :data:`TRUST_ENV_VAR` asks to load refused files with full unpickling."""
    return os.environ.get(TRUST_ENV_VAR, '').strip().lower() in _TRUE_VALUES
