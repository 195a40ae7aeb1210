"""Upstream quirks of mmcv's layers that mmslora works around.

* :func:`python_drop_probs`: mmpretrain builds its stochastic-depth schedule with
  ``numpy.linspace``, so mmcv's ``DropPath`` modules hold NumPy scalars. mmcv's
  ``drop_path`` tests ``drop_prob == 0.``, a branch on a NumPy value that
  ``torch.compile`` cannot trace: every drop path breaks the graph (mmpretrain's
  ViT: 7 breaks a forward in full fine-tuning). The same value as a Python float
  compiles into one graph.
"""

import numbers

import numpy as np
import torch.nn as nn

__all__ = ['python_drop_probs']


def python_drop_probs(module: nn.Module) -> int:
    """Turn every NumPy ``drop_prob`` in ``module``'s submodules into a Python float of
    the same value, in place. Returns how many were changed."""
    changed = 0
    for sub in module.modules():
        value = sub.__dict__.get('drop_prob')
        if isinstance(value, np.generic) and isinstance(value.item(), numbers.Real):
            sub.drop_prob = float(value)
            changed += 1
    return changed
