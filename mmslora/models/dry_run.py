"""The dry run: one forward of a backbone that changes nothing.

Block discovery (:mod:`.discovery`) and the frozen fast path
(:mod:`.frozen_path`) read shapes and outputs off such forwards.
"""

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ['dry_run']


@contextlib.contextmanager
def dry_run(module: nn.Module) -> Iterator[nn.Module]:
    """Within the context ``module`` is in eval mode and autograd is off; on exit, also
    after an exception, every submodule gets back the training flag it had (running
    statistics do not change in eval mode, so none drift)."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            yield module
    finally:
        for m, mode in modes.items():
            m.training = mode
