"""Why a checkpoint did not load: damaged files and weights-only refusals.

torch reports both as generic unpickling errors. After a failed load this module
tells them apart (:func:`damage_reason` checks the file itself;
:func:`weights_only_refusal` parses torch's refusal message for the globals it
names, or takes them from the restricted unpickler's
:class:`~.allowlist.NotAllowlisted`; :func:`unsafe_globals_in` lists every refused
global in the file) and builds the errors mmslora raises instead: :class:`DamagedCheckpointError`
and :class:`UnsafeCheckpointError`, each naming the file and what to do.
"""

import io
import os
import pickle
import pickletools
import re
import zipfile
from typing import List, Optional, Tuple

import torch

from .allowlist import (
    TRUST_ENV_VAR,
    NotAllowlisted,
    allowed_global_names,
    global_name,
    torch_default_globals,
)


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


_ANSI = re.compile(r'\x1b\[[0-9;]*m')
_GLOBAL_PATTERNS = (
    re.compile(r'GLOBAL (\S+) was not an allowed global by default'),
    re.compile(r'unsupported GLOBAL (\S+) whose module'),
)
_WEIGHTS_ONLY_REASONS = re.compile(
    r'(Trying to call reduce for unrecognized function.*|'
    r'Can only (?:create|build) .*|Trying to load unsupported GLOBAL .*|'
    r'Unsupported global: .*|Unsupported operand .*)'
)
_BUILD_CLASS = re.compile(r"Can only build .* but got <class '([^']+)'>")
_TORCH_ZIP_MAGIC = b'PK\x03\x04'


def weights_only_refusal(err: BaseException) -> Optional[Tuple[List[str], str]]:
    """``(offending globals, reason)`` if ``err`` is torch's weights-only refusal or
    the restricted unpickler's."""
    if isinstance(err, NotAllowlisted):
        return err.globals, str(err)
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


def _archive_damage(source) -> Optional[str]:
    """Why ``source`` is not an intact checkpoint, judged from the file alone (empty,
    not a torch file, a zip member failing its CRC), or None if it looks intact.

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
            return f'it starts like a zip archive but is truncated or corrupted ({exc})'
        except Exception as exc:  # zlib.error and friends
            return f'it is a corrupted zip archive ({type(exc).__name__}: {exc})'
        finally:
            if pos is not None:
                source.seek(pos)
    if head[:1] == b'\x80':  # a legacy (torch < 1.6) pickle-based checkpoint
        return None  # decided from the load error, see _legacy_damage
    return (
        f'it is neither a zip-based nor a legacy torch checkpoint '
        f'(starts with {head!r}; an HTML error page or a partial download?)'
    )


_LEGACY_DAMAGE = re.compile(
    r'Ran out of input|pickle data was truncated|unpickling stack underflow|'
    r'invalid load key|EOF|truncated|unexpected end',
    re.IGNORECASE,
)


def _legacy_damage(source, err: BaseException) -> Optional[str]:
    try:
        head, _ = _read_head_and_size(source)
    except (OSError, ValueError, AttributeError):
        return None
    if head[:1] != b'\x80':
        return None
    refusal = weights_only_refusal(err)
    if refusal is not None and refusal[0]:
        return None  # an intact file that names a refused global
    if isinstance(err, EOFError) or _LEGACY_DAMAGE.search(str(err)):
        return f'the legacy-format pickle ends early or is garbled ({_short(err)})'
    return None


def _short(err: BaseException) -> str:
    text = _ANSI.sub('', str(err)).strip().splitlines()
    return f'{type(err).__name__}: {text[-1]}' if text else type(err).__name__


def describe_source(source, name: Optional[str]) -> str:
    """How messages call ``source``: ``name`` if given, else its path or file name."""
    if name:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, 'name', None) or f'<{type(source).__name__} object>'


def _unsafe_message(filename: str, names: List[str], all_names: List[str], reason: str) -> str:
    if names:
        what = ('it needs the global ' if len(names) == 1 else 'it needs the globals ') + ', '.join(
            f'`{n}`' for n in names
        )
        what += ", which is not on mmslora's allowlist of types found in OpenMMLab checkpoints"
    else:
        what = f'weights-only unpickling refused it ({reason})'
    lines = [
        f'Refusing to load checkpoint {filename!r}: {what}. Unpickling an '
        'arbitrary global can run arbitrary code, so nothing was loaded.'
    ]
    if all_names and all_names != names:
        lines.append('All non-allowlisted globals in this file: ' + ', '.join(all_names) + '.')
    suggest = all_names or names
    lines.append('Only if you trust where this file came from, either')
    if suggest:
        lines.append(
            '  - allow exactly these globals before loading: '
            '`mmslora.utils.checkpoint.allow_globals('
            f'{suggest!r})`, or'
        )
    lines.append(
        f'  - set the environment variable {TRUST_ENV_VAR}=1 to load '
        'refused files with full unpickling (torch.load(..., '
        'weights_only=False)); a warning names each such file.'
    )
    return '\n'.join(lines)


def globals_in_pickle(data: bytes) -> List[str]:
    """The globals a pickle names, in order, each once (read from its opcodes,
    nothing is unpickled)."""
    found: List[str] = []
    memo = {}
    # The two values on top of the stack where they are known strings, else None:
    # STACK_GLOBAL (protocol >= 4) takes its module and name from there.
    top: List[Optional[str]] = [None, None]
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ('GLOBAL', 'INST'):
            found.append(global_name(*arg.split(' ', 1)))
            top = [None, None]
        elif opcode.name == 'STACK_GLOBAL':
            if None not in top:
                found.append(global_name(*top))
            top = [None, None]
        elif opcode.name == 'MEMOIZE':
            memo[len(memo)] = top[-1]
        elif opcode.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = top[-1]
        elif opcode.name in ('GET', 'BINGET', 'LONG_BINGET'):
            top = [top[-1], memo.get(arg)]
        elif opcode.stack_after:
            top = [top[-1], arg if opcode.stack_after == [pickletools.pyunicode] else None]
        elif opcode.stack_before:  # popped only: what is on top now is unknown
            top = [None, None]
    return list(dict.fromkeys(found))


def _globals_in_archive(source) -> List[str]:
    """:func:`globals_in_pickle` of a zip checkpoint's ``data.pkl``."""
    with zipfile.ZipFile(source) as archive:
        member = next(n for n in archive.namelist() if n == 'data.pkl' or n.endswith('/data.pkl'))
        return globals_in_pickle(archive.read(member))


def unsafe_globals_in(source) -> List[str]:
    """Every global in the file that neither torch nor we allow (best effort: zip
    checkpoints; torch's ``get_unsafe_globals_in_checkpoint`` where it has one,
    torch >= 2.5, else :func:`globals_in_pickle`)."""
    try:
        pos = None if isinstance(source, (str, os.PathLike)) else source.tell()
        try:
            if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):
                found = torch.serialization.get_unsafe_globals_in_checkpoint(source)
            else:
                found = [n for n in _globals_in_archive(source) if n not in torch_default_globals()]
        finally:
            if pos is not None:
                source.seek(pos)
    except Exception:
        return []
    ours = set(allowed_global_names())
    return [n for n in found if n not in ours]


def damage_reason(source, err: BaseException) -> Optional[str]:
    """Why ``source``, whose load failed with ``err``, is not an intact checkpoint;
    None if it looks intact."""
    return _archive_damage(source) or _legacy_damage(source, err)


def damaged_error(filename: str, reason: str) -> DamagedCheckpointError:
    """The error for a damaged file, saying what to do about it."""
    return DamagedCheckpointError(
        f'Checkpoint {filename!r} is damaged or incomplete: {reason}. '
        'It cannot be loaded. If it was downloaded, delete it and '
        'download it again (an interrupted download leaves a truncated '
        'file); if a training run wrote it, re-save it or use another '
        'checkpoint of that run.',
        filename,
        reason,
    )


def unsafe_error(
    filename: str, names: List[str], all_names: List[str], reason: str
) -> UnsafeCheckpointError:
    """The error for a refused file, naming its globals and the two opt-ins."""
    return UnsafeCheckpointError(
        _unsafe_message(filename, names, all_names, reason), filename, names or all_names
    )
