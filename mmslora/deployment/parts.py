"""The parts of an OpenMMLab model that export to ONNX, and why a part does not.

:func:`model_parts` names, for a detector, segmentor or classifier built from a config:

* ``'backbone'``: ``model.backbone`` (the ``MSLoRABackbone`` with its adapters);
* ``'features'``: ``model.extract_feat`` where the model has a neck (backbone + neck:
  FPN levels, a classifier's pooled vector);
* ``'model'``: the toolbox's own ``model(inputs, mode='tensor')``: a classifier's
  logits, a segmentor's decode-head logits, a detector's raw head outputs (before
  box decoding and NMS). Inputs are the data preprocessor's output (normalised,
  padded images), as in the toolboxes' ``'tensor'`` mode.

:func:`why_not_exportable` turns an export failure into a sentence with the reason and
what to do instead; :func:`export_parts` exports the parts and checks them against
onnxruntime.
"""

import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmslora.models import MSLoRABackbone
from .onnx import FlatOutputs, export_onnx, max_differences, onnxruntime_outputs

__all__ = ['PARTS', 'model_parts', 'why_not_exportable', 'PartExport', 'export_parts']

#: the part names, in export order
PARTS = ('backbone', 'features', 'model')

TWO_STAGE = (
    'a two-stage detector\'s \'tensor\' mode makes region proposals from the '
    'image metas of data samples, with NMS: no graph of the image alone computes '
    'it. Export \'features\' (backbone + neck) and run the heads in PyTorch, or '
    'convert the whole detector with MMDeploy (mmcv\'s ONNX ops for NMS and '
    'RoIAlign)'
)
NEEDS_SAMPLES = (
    'its \'tensor\' mode needs data samples (image metas), which a graph of '
    'the image alone cannot take'
)
ADAPTIVE_POOL = (
    'the TorchScript-based exporter writes adaptive average pooling (UperNet\'s '
    'and PSPNet\'s pyramid pooling) only where each output size divides the '
    'input size: choose an input shape whose smallest feature map is a multiple '
    'of every pooling scale (e.g. 192 or 384 pixels for scales 1, 2, 3, 6 at '
    'stride 32), or use the torch.export-based exporter (--dynamo)'
)


def model_parts(model: nn.Module) -> Dict[str, nn.Module]:
    """The exportable parts of ``model`` by name (:data:`PARTS`), each a module whose
    ``forward(inputs)`` returns a flat tuple of tensors. A model that is itself an
    ``MSLoRABackbone`` has only ``'backbone'``.

    Raises:
        ValueError: ``model`` has no ``backbone`` and is no ``MSLoRABackbone``.
    """
    if isinstance(model, MSLoRABackbone):
        return {'backbone': FlatOutputs(model)}
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(
            f'{type(model).__name__} has no `backbone` module; give a config '
            f'whose model is an OpenMMLab detector, segmentor or classifier.'
        )
    parts = {'backbone': FlatOutputs(backbone)}
    if getattr(model, 'with_neck', False) and hasattr(model, 'extract_feat'):
        parts['features'] = FlatOutputs(model, 'extract_feat')
    parts['model'] = FlatOutputs(model, data_samples=None, mode='tensor')
    return parts


def why_not_exportable(model: nn.Module, part: str, error: BaseException) -> str:
    """One sentence: why ``part`` of ``model`` did not export (``error`` was raised by
    its forward or by the exporter), and what to do instead."""
    if part == 'model' and getattr(model, 'with_rpn', False):
        return TWO_STAGE
    lines = str(error).strip().splitlines()
    message = f'{type(error).__name__}: {lines[0] if lines else ""}'.strip()
    if len(message) > 300:
        message = message[:300] + ' ...'
    if part == 'model' and 'NoneType' in str(error):
        return f'{NEEDS_SAMPLES} ({message})'
    if 'adaptive_avg_pool2d' in str(error):
        return f'{ADAPTIVE_POOL} ({message})'
    return message


@dataclass
class PartExport:
    """What :func:`export_parts` did with one part: ``path`` of the ONNX file, or None
    and ``reason``; with ``verify`` the largest ``(abs, rel)`` difference of
    onnxruntime's outputs from the model's (:func:`~.onnx.max_differences`)."""

    name: str
    path: Optional[str] = None
    reason: Optional[str] = None
    differences: Optional[Tuple[float, float]] = None


def export_parts(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    out_dir: str,
    parts: Sequence[str] = PARTS,
    exporter: str = 'dynamo',
    opset=None,
    verify: bool = False,
) -> List[PartExport]:
    """Export each of ``parts`` (names of :func:`model_parts`) of ``model`` (put in eval
    mode) for ``inputs`` to ``out_dir/<part>.onnx``; a part that the model does not
    have, that does not run on ``inputs`` alone, or that the exporter refuses gets a
    ``reason`` (:func:`why_not_exportable`) instead, and no file.

    Raises:
        ValueError: an unknown part name.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f'unknown model parts {unknown}; choose from {PARTS}.')
    model.eval()
    available = model_parts(model)
    results = []
    for name in parts:
        if name not in available:
            results.append(PartExport(name, reason=f'{type(model).__name__} has no neck'))
            continue
        path = osp.join(out_dir, f'{name}.onnx')
        try:
            with torch.no_grad():
                want = available[name](*inputs)
            export_onnx(available[name], inputs, path, exporter, opset)
        except Exception as error:  # noqa: BLE001  (any failure is reported, not raised)
            if osp.exists(path):
                os.remove(path)
            results.append(PartExport(name, reason=why_not_exportable(model, name, error)))
            continue
        result = PartExport(name, path=path)
        if verify:
            result.differences = max_differences(onnxruntime_outputs(path, inputs), want)
        results.append(result)
    return results
