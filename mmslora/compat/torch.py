"""What mmslora needs of torch across the supported range (2.1 to 2.14).

* :func:`is_compiling`: whether ``torch.compile`` (dynamo) is tracing the caller.
  ``torch.compiler.is_compiling`` is public from torch 2.3; torch 2.1 and 2.2 have
  only ``torch._dynamo.is_compiling``.
* :func:`register_state_dict_post_hook`: a hook that edits a module's state dict in
  place. ``Module.register_state_dict_post_hook`` is public from torch 2.2; torch 2.1
  has only ``Module._register_state_dict_hook``, which runs the same way.
* :func:`is_exporting`: whether an exporter records the caller into a graph for use
  outside Python. ``torch.onnx.is_in_onnx_export`` (every supported torch) is True in
  the TorchScript-based ONNX exporter and, from torch 2.5 on, in the torch.export-based
  one; ``torch.compiler.is_exporting`` (torch 2.5+) in ``torch.export``;
  ``torch.jit.is_tracing`` in ``torch.jit.trace`` (and the TorchScript exporter).
* :func:`records_autograd`: whether autograd records what the caller runs now.
* :func:`onnx_export`: ``torch.onnx.export`` with the exporter named. Its ``dynamo``
  argument (the torch.export-based exporter, which needs the ``onnxscript`` package)
  arrived in torch 2.5 and is the default from torch 2.9; torch 2.1 to 2.4 have only
  the TorchScript-based exporter behind that call.
"""

import importlib.util
import inspect
from typing import Callable, Optional, Tuple

import torch
from torch.utils.hooks import RemovableHandle

__all__ = [
    'is_compiling',
    'register_state_dict_post_hook',
    'is_exporting',
    'records_autograd',
    'onnx_export',
    'dynamo_onnx_unavailable',
]


def is_compiling() -> bool:
    """True while ``torch.compile`` traces the calling code, False in eager mode.

    Code that only pays off in eager mode (caches keyed on storage pointers,
    ``torch.utils.checkpoint`` regions the compiler's own partitioner replaces) asks
    this to take its traceable branch.
    """
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


def register_state_dict_post_hook(module: torch.nn.Module, hook: Callable) -> RemovableHandle:
    """Run ``hook(module, state_dict, prefix, local_metadata)`` after ``module`` has
    written its part of a state dict (torch's ``state_dict()`` and mmengine's
    ``get_state_dict`` both run it); the hook edits ``state_dict`` in place and returns
    None. The returned handle's ``remove()`` detaches it."""
    if hasattr(module, 'register_state_dict_post_hook'):
        return module.register_state_dict_post_hook(hook)
    return module._register_state_dict_hook(hook)


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter), ``torch.export.export`` or
    ``torch.jit.trace`` records the calling code, False in eager mode and under
    ``torch.compile``."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, 'compiler', None)
    return bool(
        compiler is not None and hasattr(compiler, 'is_exporting') and compiler.is_exporting()
    )


def records_autograd() -> bool:
    """True where autograd records the operations the caller runs for a backward pass:
    grad mode is on and no exporter records them (an exported graph is an inference
    graph, even where the exporter traces with grad mode on, as both ONNX exporters
    do). Memory savings for backward (custom autograd functions, checkpoint regions)
    ask this, so that an exporter sees plain operations."""
    return torch.is_grad_enabled() and not is_exporting()


def dynamo_onnx_unavailable() -> Optional[str]:
    """Why ``torch.onnx.export(..., dynamo=True)`` cannot run here, or None where it
    can (torch >= 2.5 with ``onnxscript`` installed)."""
    if 'dynamo' not in inspect.signature(torch.onnx.export).parameters:
        return (
            f'torch {torch.__version__} has only the TorchScript-based ONNX exporter '
            f'(the torch.export-based one, dynamo=True, needs torch >= 2.5)'
        )
    if importlib.util.find_spec('onnxscript') is None:
        return (
            'the torch.export-based ONNX exporter (dynamo=True) needs the onnxscript '
            'package: pip install onnxscript'
        )
    return None


def onnx_export(
    module: torch.nn.Module,
    args: Tuple[torch.Tensor, ...],
    path: str,
    dynamo: bool,
    opset: Optional[int] = None,
) -> None:
    """``torch.onnx.export(module, args, path)`` with the torch.export-based exporter
    (``dynamo=True``) or the TorchScript-based one (``dynamo=False``, the one MMDeploy
    drives), at ONNX opset ``opset`` (None: the exporter's default).

    Raises:
        RuntimeError: ``dynamo=True`` where :func:`dynamo_onnx_unavailable` says why not.
    """
    kwargs = {} if opset is None else dict(opset_version=opset)
    if dynamo:
        reason = dynamo_onnx_unavailable()
        if reason is not None:
            raise RuntimeError(f'{reason}; use the TorchScript-based exporter instead.')
        torch.onnx.export(module, args, path, dynamo=True, verbose=False, **kwargs)
    elif 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        torch.onnx.export(module, args, path, dynamo=False, **kwargs)
    else:
        torch.onnx.export(module, args, path, **kwargs)
