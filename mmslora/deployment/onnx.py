"""ONNX export of a module and its check against onnxruntime.

Both of torch's exporters are supported (:data:`EXPORTERS`): ``'dynamo'``, the
torch.export-based one (``torch.onnx.export(..., dynamo=True)``, torch >= 2.5 with
``onnxscript``) and ``'torchscript'``, the TorchScript-based one (``dynamo=False``, the
exporter MMDeploy drives, on every supported torch). mmslora's models need no switch
for either: while an exporter records, the frozen fast path and the adapters run plain
operations (:func:`mmslora.compat.torch.is_exporting`).

The graph is exported for the input shape given; outputs are flattened to a tuple of
tensors (nested tuples, lists and dicts of a backbone or a head, in order).
"""

import os
import os.path as osp
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmslora.compat.torch import dynamo_onnx_unavailable, onnx_export

__all__ = [
    'EXPORTERS',
    'default_exporter',
    'flat_tensors',
    'FlatOutputs',
    'export_onnx',
    'onnxruntime_outputs',
    'max_differences',
]

#: the exporters :func:`export_onnx` takes
EXPORTERS = ('dynamo', 'torchscript')


def default_exporter() -> str:
    """``'dynamo'`` where torch has it (torch >= 2.5 with onnxscript), else
    ``'torchscript'``."""
    return 'torchscript' if dynamo_onnx_unavailable() else 'dynamo'


def flat_tensors(outputs) -> List[torch.Tensor]:
    """The tensors of (nested) tuples, lists and dicts ``outputs``, depth first, in order.

    Raises:
        TypeError: an output that is none of those nor a tensor (e.g. a data sample).
    """
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in flat_tensors(item)]
    raise TypeError(
        f'an output of type {type(outputs).__name__} is not a tensor; ONNX '
        f'graphs return tensors only.'
    )


class FlatOutputs(nn.Module):
    """``forward(*inputs)`` of ``module`` (or of its method ``method``) with its outputs
    flattened to a tuple of tensors (:func:`flat_tensors`), ``kwargs`` passed along."""

    def __init__(self, module: nn.Module, method: str = 'forward', **kwargs) -> None:
        super().__init__()
        self.module, self.method, self.kwargs = module, method, kwargs

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(flat_tensors(getattr(self.module, self.method)(*inputs, **self.kwargs)))


def export_onnx(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str,
    exporter: str = 'dynamo',
    opset=None,
) -> str:
    """Export ``module`` in eval mode for ``inputs`` to the ONNX file ``path`` (folders
    made) with ``exporter`` (one of :data:`EXPORTERS`) at ``opset`` (None: the
    exporter's default); return ``path``. The modules' training modes are restored.

    Raises:
        ValueError: an unknown ``exporter``.
        RuntimeError: ``'dynamo'`` where this torch does not have it (the reason named).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'unknown ONNX exporter {exporter!r}; use one of {EXPORTERS}.')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        onnx_export(module, tuple(inputs), path, dynamo=exporter == 'dynamo', opset=opset)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return path


def onnxruntime_outputs(path: str, inputs: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """The outputs of the ONNX file ``path`` on ``inputs`` in onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def max_differences(got: Sequence[np.ndarray], want: Sequence[torch.Tensor]) -> Tuple[float, float]:
    """``(max abs, max rel)`` difference of ``got`` from ``want``, output by output; the
    relative one is each output's largest absolute difference over its largest
    magnitude (a scale that a near-zero element does not blow up).

    Raises:
        ValueError: the numbers or shapes of the outputs differ.
    """
    if len(got) != len(want):
        raise ValueError(f'the ONNX graph has {len(got)} outputs, the module {len(want)}.')
    worst_abs = worst_rel = 0.0
    for g, w in zip(got, want):
        w = w.detach().cpu().numpy()
        if g.shape != w.shape:
            raise ValueError(f'an ONNX output has shape {g.shape}, the module\'s {w.shape}.')
        diff = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
        scale = float(np.abs(w).max()) if w.size else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    return worst_abs, worst_rel
