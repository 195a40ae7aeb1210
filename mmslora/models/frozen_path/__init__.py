"""The frozen fast path: frozen layers pass gradients back without keeping activations.

The package: :mod:`.functions` (the autograd functions), :mod:`.folding` (BN folding),
:mod:`.layers` (the fast forwards, and putting them on a backbone).

Autograd keeps a layer's input for the gradient of its weight, also when the weight is
frozen. A frozen linear map needs only its weight to pass a gradient back (the insight
of TinyTL, Cai et al., NeurIPS 2020), so on a frozen backbone with adapters, whose
gradients must flow through the frozen layers, this module replaces (per module
instance, with the state dict untouched) the forward of

* ``Conv2d`` with a frozen weight: ``y = W * x + b`` keeps only ``W`` (a parameter, no
  new memory); ``dL/dx = W^T dL/dy`` (the transposed convolution), ``dL/db = sum dL/dy``
  where the bias trains (BitFit). (A frozen ``Linear`` needs nothing: torch's autograd
  keeps its input only when the weight's gradient is wanted, on torch 2.1 to 2.14;
  ``tests/test_models/test_frozen_path.py`` checks it. Convolution and batch norm keep
  theirs whatever is frozen.)
* eval-mode ``BatchNorm2d`` with a frozen weight, ``y = x s + t`` with
  ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean s``: folded into the convolution
  that produced its input (``W' = W s``, ``b' = b s + t``; the BN then passes its input
  through), or, where there is none, an affine map that keeps only ``s``;
* ``ReLU`` / ``ReLU6``: a bool mask (1 byte per element) instead of a float map.

Folding is found once, by a dry forward (which BN reads which convolution's output),
and checked at once by a second one with randomised BN statistics against the plain
layers; a pair whose output differs is left unfolded. It is decided again at every
forward from the live modules: a BN in training mode, a trainable BN weight, a hook on
either layer, or a BN replaced in its parent (``SyncBatchNorm`` conversion) turns that
fold off, and so does, under autograd, a convolution whose output is smaller than its
weight (scaling the weight in forward and backward would cost more than the BN's own
two passes over the output). Folded weights are computed from the current tensors at
every forward (kept between eager forwards without autograd, keyed by the tensors'
storage and version), so ``init_weights``, ``load_state_dict``, ``load_from`` and resume
take effect at once. Under ``torch.compile`` the convolution and BN functions trace
into the graph (no graph break), folded weights are computed in it, and ReLUs run their
own forward. A layer whose weight trains, a class that overrides the replaced method (``Conv2d._conv_forward``, so every subclass
whose forward ends there, mmcv's wrappers or TF-style padding, runs the fast path;
BN/ReLU ``forward``), a padding mode other than zeros, and any layer while no
input requires grad run their own forward. Under autocast the layers cast as autocast does.

Outputs equal the plain layers' up to float rounding (folding reorders products);
``enable_frozen_fast_path(..., fold_bn=False)`` keeps convolution outputs bitwise.
"""

from .folding import FOLD_ATTR, Fold
from .layers import FastPathReport, disable_frozen_fast_path, enable_frozen_fast_path

__all__ = [
    'enable_frozen_fast_path',
    'disable_frozen_fast_path',
    'FastPathReport',
    'Fold',
    'FOLD_ATTR',
]
