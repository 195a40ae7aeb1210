from .hooks import CheckpointFitHook, ParameterReportHook, RandomStateHook
from .optim import TrainableOptimWrapperConstructor

__all__ = [
    'CheckpointFitHook',
    'ParameterReportHook',
    'RandomStateHook',
    'TrainableOptimWrapperConstructor',
]
