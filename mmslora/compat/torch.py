"""What mmslora needs of torch across the supported range (2.1 to 2.14).

* :func:`is_compiling`: whether ``torch.compile`` (dynamo) is tracing the caller.
  ``torch.compiler.is_compiling`` is public from torch 2.3; torch 2.1 and 2.2 have
  only ``torch._dynamo.is_compiling``.
* :func:`is_exporting`: whether an exporter records the caller into a graph for use
  outside Python. ``torch.onnx.is_in_onnx_export`` (every supported torch) is True in
  the TorchScript-based ONNX exporter and, from torch 2.5 on, in the torch.export-based
  one; ``torch.compiler.is_exporting`` (torch 2.5+) in ``torch.export``;
  ``torch.jit.is_tracing`` in ``torch.jit.trace`` (and the TorchScript exporter).
* :func:`records_autograd`: whether autograd records what the caller runs now.
"""
import torch

__all__ = ['is_compiling', 'is_exporting', 'records_autograd']


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


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter), ``torch.export.export`` or
    ``torch.jit.trace`` records the calling code, False in eager mode and under
    ``torch.compile``."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and hasattr(compiler, 'is_exporting')
                and compiler.is_exporting())


def records_autograd() -> bool:
    """True where autograd records the operations the caller runs for a backward pass:
    grad mode is on and no exporter records them (an exported graph is an inference
    graph, even where the exporter traces with grad mode on, as both ONNX exporters
    do). Memory savings for backward (custom autograd functions, checkpoint regions)
    ask this, so that an exporter sees plain operations."""
    return torch.is_grad_enabled() and not is_exporting()
