from .efficientnet_lite import (
    EfficientNetLite,
    MBConvBlock,
    convert_efficientnet_lite0_state_dict,
    find_efficientnet_lite0_weights,
    load_efficientnet_lite0_imagenet,
)

__all__ = [
    'EfficientNetLite',
    'MBConvBlock',
    'convert_efficientnet_lite0_state_dict',
    'find_efficientnet_lite0_weights',
    'load_efficientnet_lite0_imagenet',
]
