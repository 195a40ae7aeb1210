from . import backbones  # noqa: F401  (registers mmslora.EfficientNetLite)
from .adapter import LowRankProjection, MSLoRAAdapter, MultiScaleTransform
from .wrapper import MSLoRABackbone

__all__ = ['MSLoRAAdapter', 'LowRankProjection', 'MultiScaleTransform', 'MSLoRABackbone']
