from .hooks import ParameterReportHook
from .optim import TrainableOptimWrapperConstructor

__all__ = ['ParameterReportHook', 'TrainableOptimWrapperConstructor']
