"""Hooks of mmslora, one per module."""

from .checkpoint_fit import CheckpointFitHook
from .parameter_report import ParameterReportHook
from .random_state import RandomStateHook

__all__ = ['CheckpointFitHook', 'ParameterReportHook', 'RandomStateHook']
