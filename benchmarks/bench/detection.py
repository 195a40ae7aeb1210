"""The detection task: instance detection of nuclei with mmdet's Mask R-CNN (or Faster
R-CNN) of the demo config, the real ImageNet EfficientNet-Lite0 in ``MSLoRABackbone``.

Data: the 512 x 512 Data Science Bowl image and its instance label map shipped in the
stardist wheel (read by ``tools/dataset_converters/nuclei.py``), split into disjoint
regions: fit = rows 0-255, val = the bottom-left quadrant, test = the bottom-right
quadrant (the demo's held-out tile). Training batches: random ``crop`` x ``crop``
windows of the fit region with the 8 flips/transpositions, scaled by ``scale``
(nearest for the labels); an instance is a label's pixels inside the window when at
least ``min_area`` of them are (at the source scale). Scores: mmdet's ``CocoMetric``
(bbox AP, and segm AP for Mask R-CNN) on the whole val or test region, scaled alike.
"""

import copy
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ROOT
from .env import converter
from .methods import DEMO_WIDTHS, switch

CONFIG = 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py'
REGIONS = dict(
    fit=(slice(0, 256), slice(0, 512)),
    val=(slice(256, 512), slice(0, 256)),
    test=(slice(256, 512), slice(256, 512)),
)


def demo_config():
    """The demo detector's config (mmengine ``Config``)."""
    from mmengine.config import Config

    return Config.fromfile(osp.join(ROOT, CONFIG))


def detector_cfg(model_cfg: dict, row: str, detector: str = 'mask') -> dict:
    """The demo's model config with its backbone switched to ``row`` (demo widths);
    ``detector='faster'``: Faster R-CNN, the same but without the mask branch."""
    cfg = copy.deepcopy(model_cfg)
    cfg['backbone'] = switch(cfg['backbone'], row, DEMO_WIDTHS)
    if detector == 'faster':
        cfg['type'] = 'FasterRCNN'
        for key in ('mask_roi_extractor', 'mask_head'):
            cfg['roi_head'].pop(key, None)
    elif detector != 'mask':
        raise ValueError(f"detector must be 'mask' or 'faster', not {detector!r}")
    return cfg


def build_detector(model_cfg: dict, seed: int = 0) -> nn.Module:
    """mmdet's ``MODELS.build`` in the mmdet scope, seeded, ``init_weights()``, train mode."""
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(seed)
        model = MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))
        model.init_weights()
    return model.train()


def load_instances() -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """The nuclei image (uint8 (3, H, W), one intensity stretch for the whole image) and
    its instance labels (int32 (H, W), 0 background) of the fit, val and test regions."""
    module = converter('nuclei')
    image, labels = module.load_source()
    rgb = torch.from_numpy(np.ascontiguousarray(module.normalize_to_rgb(image).transpose(2, 0, 1)))
    labels = torch.from_numpy(labels.astype(np.int32))
    if rgb.shape[1:] != (512, 512):
        raise ValueError(f'expected the 512 x 512 stardist image, got {tuple(rgb.shape)}')
    return {
        k: (rgb[:, ys, xs].contiguous(), labels[ys, xs].contiguous())
        for k, (ys, xs) in REGIONS.items()
    }


def sample(image: torch.Tensor, labels: torch.Tensor, scale: int, min_area: int, img_id: int = 0):
    """(inputs, DetDataSample, coco instances) of one window: the image scaled by
    ``scale`` and its instances (boxes, labels 0, bitmap masks) at that scale."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    from pycocotools import mask as mask_utils

    h, w = labels.shape
    x = (
        F.interpolate(
            image[None].float(), scale_factor=scale, mode='bilinear', align_corners=False
        )[0]
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    big = labels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    ids, counts = labels.unique(return_counts=True)
    keep = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_area]
    masks = (
        np.stack([(big == i).numpy() for i in keep])
        if keep
        else np.zeros((0, h * scale, w * scale), bool)
    )
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    shape = (h * scale, w * scale)
    data_sample = DetDataSample(
        metainfo=dict(img_id=img_id, img_shape=shape, ori_shape=shape, scale_factor=(1.0, 1.0))
    )
    data_sample.gt_instances = InstanceData(
        bboxes=bboxes,
        labels=torch.zeros(len(keep), dtype=torch.long),
        masks=BitmapMasks(masks.astype(np.uint8), *shape),
    )
    coco = [
        dict(
            bbox=b,
            bbox_label=0,
            ignore_flag=0,
            mask=mask_utils.encode(np.asfortranarray(m.astype(np.uint8))),
        )
        for b, m in zip(boxes, masks)
    ]
    return x, data_sample, coco


class DetBatches:
    """Training batches of the fit region for one seed (one ``torch.Generator(seed)``:
    the same windows and flips for every method)."""

    def __init__(self, fit, batch: int, seed: int, crop: int, scale: int, min_area: int):
        self.image, self.labels = fit
        self.batch, self.crop, self.scale, self.min_area = batch, crop, scale, min_area
        self.gen = torch.Generator().manual_seed(seed)

    def _rand(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))

    def next(self) -> dict:
        inputs, samples = [], []
        _, h, w = self.image.shape
        for _ in range(self.batch):
            top, left = self._rand(h - self.crop + 1), self._rand(w - self.crop + 1)
            x = self.image[:, top : top + self.crop, left : left + self.crop]
            y = self.labels[top : top + self.crop, left : left + self.crop]
            if self._rand(2):
                x, y = x.flip(-1), y.flip(-1)
            if self._rand(2):
                x, y = x.flip(-2), y.flip(-2)
            if self._rand(2):
                x, y = x.transpose(-1, -2), y.transpose(-1, -2)
            image, data_sample, _ = sample(x, y, self.scale, self.min_area)
            inputs.append(image)
            samples.append(data_sample)
        return dict(inputs=inputs, data_samples=samples)


def det_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    data = model.data_preprocessor(
        dict(inputs=list(batch['inputs']), data_samples=batch['data_samples']), training=True
    )
    loss, _ = model.parse_losses(model.loss(data['inputs'], data['data_samples']))
    return loss


@torch.no_grad()
def coco_scores(model: nn.Module, region, scale: int, min_area: int) -> Dict[str, float]:
    """bbox AP (and segm AP with a mask head) of ``model`` on one region, in %, against
    the region's instances (:func:`coco_ap`)."""
    x, data_sample, coco = sample(*region, scale=scale, min_area=min_area)
    was_training = model.training
    model.eval()
    data = model.data_preprocessor(dict(inputs=[x], data_samples=[data_sample]), False)
    pred = model.predict(data['inputs'], data['data_samples'], rescale=True)[0]
    model.train(was_training)
    with_mask = getattr(model.roi_head, 'with_mask', False)
    return coco_ap(pred.to_dict(), coco, ['bbox'] + (['segm'] if with_mask else []))


def coco_ap(prediction: dict, instances: List[dict], metrics: List[str]) -> Dict[str, float]:
    """``<metric>_mAP`` of every metric and ``bbox_mAP_50``, in %, from mmdet's
    ``CocoMetric`` for one image: ``prediction`` a DetDataSample as a dict (img_id,
    ori_shape, pred_instances), ``instances`` its ground truth (bbox x1 y1 x2 y2,
    bbox_label, ignore_flag, mask as RLE). A metric CocoMetric does not return (nothing
    detected) counts as 0."""
    import contextlib
    import io
    import logging

    from mmdet.evaluation import CocoMetric
    from mmengine.logging import MMLogger

    metric = CocoMetric(metric=metrics)
    metric.dataset_meta = dict(classes=('nucleus',))
    metric.process({}, [dict(prediction, instances=instances)])
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its tables, and an error line for no detection
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
            values = metric.evaluate(1)
    finally:
        logger.setLevel(level)
    keys = [f'{m}_mAP' for m in metrics] + ['bbox_mAP_50']
    return {k: 100.0 * float(values.get(f'coco/{k}', 0.0)) for k in keys}


def run_detection(
    job: dict, data: dict, settings: dict, device: torch.device, amp: bool = False
) -> dict:
    """One detection run: ``job`` (task, row, lr, seed), ``data`` (:func:`load_instances`),
    ``settings`` (detector, steps, batch, crop, scale, min_area, head_lr, clip, eval_at).
    The score is bbox AP (%); ``test_metrics`` has every CocoMetric value at the end."""
    from .training import EVAL_AT, fit, param_groups, params_record

    cfg = detector_cfg(demo_config().model, job['row'], settings['detector'])
    model = build_detector(cfg, job['seed']).to(device)
    batches = DetBatches(
        data['fit'],
        settings['batch'],
        job['seed'],
        settings['crop'],
        settings['scale'],
        settings['min_area'],
    )
    place = {k: (x.to(device), y) for k, (x, y) in data.items()}

    def scores(split):
        return coco_scores(model, place[split], settings['scale'], settings['min_area'])

    def loss_fn():
        batch = batches.next()
        batch['inputs'] = [x.to(device) for x in batch['inputs']]
        batch['data_samples'] = [s.to(device) for s in batch['data_samples']]
        return det_loss(model, batch)

    result = fit(
        model,
        param_groups(model, job['lr'], settings['head_lr']),
        loss_fn,
        lambda: scores('val')['bbox_mAP'],
        settings['steps'],
        settings.get('eval_at', EVAL_AT),
        device,
        amp,
        settings.get('clip'),
    )
    test = scores('test')
    return dict(result, test=test['bbox_mAP'], test_metrics=test, params=params_record(model))
