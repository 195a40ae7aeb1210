from .hooks import ParameterReportHook, RandomStateHook
from .optim import TrainableOptimWrapperConstructor

__all__ = ['ParameterReportHook', 'RandomStateHook', 'TrainableOptimWrapperConstructor']
