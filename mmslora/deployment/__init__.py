"""Deployment: ONNX export of mmslora models.

:mod:`.onnx` exports a module with either of torch's exporters and compares the
result with onnxruntime; :mod:`.parts` exports the parts of a detector, segmentor or
classifier (backbone, backbone + neck, the toolbox's ``'tensor'`` mode), naming why
a part cannot be exported. ``mmslora-export-onnx`` (:mod:`mmslora.cli.export_onnx`)
does it from a config and a checkpoint. See ``docs/export.md``.
"""

from .onnx import (
    EXPORTERS,
    FlatOutputs,
    default_exporter,
    export_onnx,
    flat_tensors,
    max_differences,
    onnxruntime_outputs,
)
from .parts import PARTS, PartExport, export_parts, model_parts, why_not_exportable

__all__ = [
    'EXPORTERS',
    'FlatOutputs',
    'default_exporter',
    'export_onnx',
    'flat_tensors',
    'max_differences',
    'onnxruntime_outputs',
    'PARTS',
    'PartExport',
    'export_parts',
    'model_parts',
    'why_not_exportable',
]
