"""What mmslora needs of torch across the supported range (2.1 to 2.14).

* :func:`is_compiling`: whether ``torch.compile`` (dynamo) is tracing the caller.
  ``torch.compiler.is_compiling`` is public from torch 2.3; torch 2.1 and 2.2 have
  only ``torch._dynamo.is_compiling``.
"""
import torch

__all__ = ['is_compiling']


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
