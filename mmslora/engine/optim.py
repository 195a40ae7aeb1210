"""An optimizer-wrapper constructor that hands the optimizer trainable parameters only."""

import logging

import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmslora.registry import OPTIM_WRAPPER_CONSTRUCTORS


class _DropFrozenNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return 'is skipped since its requires_grad=False' not in record.getMessage()


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Like MMEngine's default constructor, but frozen parameters never reach the
    optimizer, and no warning is logged for each of them (a frozen ViT-B would log
    about 150). ``paramwise_cfg`` works as upstream on the trainable parameters.

    Use it with ``optim_wrapper=dict(constructor='mmslora.TrainableOptimWrapperConstructor',
    ...)``.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = getattr(model, 'module', model)
        if self.paramwise_cfg:
            drop = _DropFrozenNotices()
            logger = MMLogger.get_current_instance()
            logger.addFilter(drop)
            try:
                return super().__call__(module)
            finally:
                logger.removeFilter(drop)
        # no paramwise rules: one group of the trainable parameters
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                'the model has no trainable parameter: check `trainable` and '
                'the adapter config of MSLoRABackbone.'
            )
        return super().__call__(_ParamsOnly(trainable))


class _ParamsOnly(nn.Module):
    """A module that owns nothing but exposes the given parameters."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def parameters(self, recurse: bool = True):
        return iter(self._params)
