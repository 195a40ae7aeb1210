"""The models of mmslora: the adapter contract (:mod:`.base`), MSLoRA, the wrapper, the
peers, and the model-level API (parameter counts, adapter files, reweighting maps)."""

from . import (
    backbones,  # noqa: F401  (registers mmslora.EfficientNetLite)
    peers,  # noqa: F401,E402  (registers mmslora.LoRA, BottleneckAdapter, MonaAdapter)
)
from .adapter import LowRankProjection, MSLoRAAdapter, MultiScaleTransform
from .adapter_io import adapter_state_dict, load_adapter, save_adapter
from .base import AdapterBase, AdapterHost, BlockAdapter, LayerAdapter, find_wrappers
from .params import ParameterReport, count_parameters, print_trainable_parameters
from .reweighting import record_reweighting
from .wrapper import AdapterSet, MSLoRABackbone

__all__ = [
    'MSLoRAAdapter',
    'LowRankProjection',
    'MultiScaleTransform',
    'MSLoRABackbone',
    'AdapterSet',
    'AdapterBase',
    'AdapterHost',
    'BlockAdapter',
    'LayerAdapter',
    'find_wrappers',
    'ParameterReport',
    'count_parameters',
    'print_trainable_parameters',
    'adapter_state_dict',
    'save_adapter',
    'load_adapter',
    'record_reweighting',
]
