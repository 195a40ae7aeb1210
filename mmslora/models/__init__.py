from . import backbones  # noqa: F401  (registers mmslora.EfficientNetLite)
from .adapter import LowRankProjection, MSLoRAAdapter, MultiScaleTransform
from .wrapper import MSLoRABackbone
from . import peers  # noqa: F401,E402  (registers mmslora.LoRA, BottleneckAdapter, MonaAdapter)

__all__ = ['MSLoRAAdapter', 'LowRankProjection', 'MultiScaleTransform', 'MSLoRABackbone']
