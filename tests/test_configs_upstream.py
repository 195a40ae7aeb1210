"""The README's recipe on configs shipped in the installed mmdet, mmseg and mmpretrain
wheels, applied as a user applies it: a config file in a folder outside the
repository that inherits the upstream config and ``mmslora::_base_/mslora.py``.

Each config is built (pretrained loads off, SyncBN as BN, small inputs), then trained
for two steps through the model's own data preprocessor and ``loss`` (``train_step``
with the recipe's optimizer) and run once through ``predict`` (``test_step``), on
synthetic samples of its task. Checked: the recipe composes with configs that
declare their own ``custom_imports``; the backbone stays frozen and unchanged; the
adapters get gradients and stay within 5% of the backbone (small backbones get a
fitted width, noted in the parameter report).
"""

from typing import NamedTuple

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from mmslora.models import MSLoRABackbone, count_parameters
from mmslora.utils.config import build_model_from_config, disable_pretrained

pytestmark = pytest.mark.usefixtures('restore_default_scope')

RECIPE = """
_base_ = ['{upstream}', 'mmslora::_base_/mslora.py']
model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))
optim_wrapper = _base_.mslora_optim_wrapper
"""
SIZE = 64  # pixels a side of the synthetic images, unless a case needs more


class Case(NamedTuple):
    config: str
    task: str  # 'det' (boxes), 'ins' (boxes + masks), 'seg' or 'cls'
    own_imports: bool = False  # the upstream config declares `custom_imports`
    fitted: bool = False  # hidden_dim=64 would exceed 5%: the width is fitted
    size: int = SIZE


CASES = [
    # mmdet: one-stage, two-stage, DETR-like, instance segmentation; mobile backbones.
    # (Not SSDLite: mmdet 3.3.0's SSDHead.predict reads a loss_cls it never sets.)
    Case('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 'det'),
    Case('mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', 'det'),
    Case('mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py', 'det', fitted=True),
    Case('mmdet::pvt/retinanet_pvtv2-b0_fpn_1x_coco.py', 'det'),
    Case('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'det'),
    Case('mmdet::detr/detr_r50_8xb2-150e_coco.py', 'det'),
    Case('mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', 'det'),
    Case('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'ins'),
    Case('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', 'ins'),
    Case(
        'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
        'ins',
        own_imports=True,
    ),
    Case('mmdet::rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py', 'ins'),
    # mmseg: encoder-decoders and Mask2Former
    Case('mmseg::deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py', 'seg'),
    Case(
        'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
        'seg',
        own_imports=True,
    ),
    Case('mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py', 'seg'),
    Case('mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', 'seg'),
    Case(
        'mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py', 'seg', own_imports=True
    ),
    Case('mmseg::bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py', 'seg', fitted=True),
    Case(
        'mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3plus_4xb2-80k_cityscapes-512x1024.py',
        'seg',
        fitted=True,
    ),
    Case(
        'mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py', 'seg', own_imports=True
    ),
    # mmpretrain: classifiers
    Case('mmpretrain::resnet/resnet18_8xb32_in1k.py', 'cls'),
    Case('mmpretrain::mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py', 'cls', fitted=True),
    Case('mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py', 'cls', fitted=True),
    Case('mmpretrain::hrnet/hrnet-w18_4xb32_in1k.py', 'cls', fitted=True),
    Case('mmpretrain::deit/deit-tiny_4xb256_in1k.py', 'cls'),
    # mmpretrain's Swin refuses maps smaller than its window (7) unless pad_small_map
    Case('mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py', 'cls', size=224),
]


def case_id(case: Case) -> str:
    return case.config.split('/')[-1][:-3]


def offline(cfg: Config, size: int) -> Config:
    """What a CPU test without network needs: no pretrained loads, BN for SyncBN, the
    segmentors' fixed crop (their preprocessor pads to it) at ``size``."""
    disable_pretrained(cfg)
    if cfg.get('data_preprocessor'):  # the Runner's default for the model's (mmpretrain)
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    cfg.model.backbone.backbone.init_cfg = None

    def visit(node):
        if isinstance(node, dict):
            if node.get('type') == 'SyncBN':
                node['type'] = 'BN'
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(cfg.model)
    if cfg.model.get('data_preprocessor', {}).get('size') is not None:
        cfg.model.data_preprocessor.size = (size, size)
    return cfg


def synthetic_batch(task: str, num_classes: int, size: int, generator: torch.Generator) -> dict:
    """Two images of ``size`` pixels a side with annotations of ``task``."""
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(
            torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
        )
        meta = dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0))
        if task in ('det', 'ins'):
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData

            boxes = torch.tensor([[4.0, 6.0, 40.0, 44.0], [20.0, 16.0, 60.0, 58.0]])
            masks = np.zeros((2, size, size), dtype=np.uint8)
            for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                mask[y1:y2, x1:x2] = 1
            gt = InstanceData(bboxes=boxes, labels=torch.tensor([0, num_classes - 1]))
            if task == 'ins':
                gt.masks = BitmapMasks(masks, size, size)
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = gt
        elif task == 'seg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample

            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, num_classes, (1, size, size), generator=generator)
            )
        else:
            from mmpretrain.structures import DataSample

            sample = DataSample(metainfo=meta).set_gt_label(
                int(torch.randint(0, num_classes, (1,), generator=generator))
            )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def num_classes_of(cfg: Config, task: str) -> int:
    model = cfg.model
    if task == 'cls':
        return model.head.num_classes
    if task == 'seg':
        return model.decode_head.num_classes
    head = next(model[k] for k in ('roi_head', 'bbox_head') if k in model)
    head = head.get('bbox_head', head)
    return (head[0] if isinstance(head, list) else head).num_classes


def check_predictions(task: str, predictions: list, num_classes: int, size: int) -> None:
    assert len(predictions) == 2
    for prediction in predictions:
        if task in ('det', 'ins'):
            instances = prediction.pred_instances
            assert instances.bboxes.shape[1:] == (4,)
            assert len(instances.scores) == len(instances.bboxes) == len(instances.labels)
            if task == 'ins':
                assert tuple(instances.masks.shape[1:]) == (size, size)
        elif task == 'seg':
            assert tuple(prediction.pred_sem_seg.data.shape) == (1, size, size)
        else:
            assert tuple(prediction.pred_score.shape) == (num_classes,)


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_the_recipe_trains_and_predicts_on_an_upstream_config(case, tmp_path, one_thread):
    path = tmp_path / 'my_config_mslora.py'  # a user's folder, outside the repository
    path.write_text(RECIPE.format(upstream=case.config))
    cfg = Config.fromfile(str(path))
    # the recipe adds no `custom_imports` and keeps the upstream config's own
    assert ('custom_imports' in cfg) == case.own_imports
    torch.manual_seed(0)
    model = build_model_from_config(offline(cfg, case.size), init_weights=True)
    wrapper = model.backbone
    assert isinstance(wrapper, MSLoRABackbone) and len(wrapper.adapters) > 0
    report = count_parameters(model)
    assert 0 < report.backbone_share <= 0.05, report.table()
    assert report.backbone_trainable == report.adapter
    fitted = [note for note in report.notes if 'fitting the width' in note]
    assert bool(fitted) == case.fitted, report.table()
    assert (wrapper.adapter_cfg['hidden_dim'] < 64) == case.fitted

    num_classes = num_classes_of(cfg, case.task)
    generator = torch.Generator().manual_seed(0)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    frozen = {k: v.clone() for k, v in wrapper.backbone.state_dict().items()}
    model.train()
    for _ in range(2):  # the second step: heads that start at zero (ViT's) pass gradients
        losses = model.train_step(
            synthetic_batch(case.task, num_classes, case.size, generator), optim_wrapper
        )
        assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    assert not any(p.requires_grad or p.grad is not None for p in wrapper.backbone.parameters())
    after = wrapper.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # stats included
    # the zero-initialised parameters (weight decay keeps zeros) moved: gradients arrived
    assert any(
        dict(adapter.named_parameters())[name].abs().sum() > 0
        for adapter in wrapper.adapters.values()
        for name in adapter.zero_init
    )

    model.eval()
    with torch.no_grad():
        predictions = model.test_step(synthetic_batch(case.task, num_classes, case.size, generator))
    check_predictions(case.task, predictions, num_classes, case.size)
