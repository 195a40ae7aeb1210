"""What mmslora needs of torch across the supported range (2.1 to 2.14).

* :func:`is_compiling`: whether ``torch.compile`` (dynamo) is tracing the caller.
  ``torch.compiler.is_compiling`` is public from torch 2.3; torch 2.1 and 2.2 have
  only ``torch._dynamo.is_compiling``.
* :func:`register_state_dict_post_hook`: a hook that edits a module's state dict in
  place. ``Module.register_state_dict_post_hook`` is public from torch 2.2; torch 2.1
  has only ``Module._register_state_dict_hook``, which runs the same way.
"""
from typing import Callable

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ['is_compiling', 'register_state_dict_post_hook']


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
