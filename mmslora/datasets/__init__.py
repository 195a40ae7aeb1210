from .transforms import GrayToRGB

__all__ = ['GrayToRGB']
