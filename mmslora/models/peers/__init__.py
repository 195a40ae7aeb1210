"""Peer methods behind the same wrapper as MSLoRA, for comparison (one module each):
bottleneck adapters, Mona, LoRA, and the presets of :mod:`.methods` (full
fine-tuning, linear probe, BitFit, ...)."""

from .bottleneck import BottleneckAdapter
from .lora import LoRA
from .methods import METHODS, apply_method, wrapper_cfg, wrapper_kwargs
from .mona import MonaAdapter, MonaFilter

__all__ = [
    'BottleneckAdapter',
    'LoRA',
    'MonaAdapter',
    'MonaFilter',
    'METHODS',
    'apply_method',
    'wrapper_kwargs',
    'wrapper_cfg',
]
