"""Data transforms of mmslora."""

import numpy as np
from mmcv.transforms import BaseTransform

from mmslora.registry import TRANSFORMS


@TRANSFORMS.register_module()
class GrayToRGB(BaseTransform):
    """Replicate a single-channel ``results['img']`` (H, W) or (H, W, 1) to (H, W, 3),
    so grey datasets (Fashion-MNIST) feed ImageNet-pretrained backbones."""

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 3 and img.shape[2] == 3:
            return results
        if img.ndim == 3:
            img = img[..., 0]
        results['img'] = np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
        results['img_shape'] = results['img'].shape[:2]
        return results
