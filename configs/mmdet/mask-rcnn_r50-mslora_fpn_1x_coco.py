# Mask R-CNN R-50 FPN 1x COCO with a frozen ImageNet R-50 and MSLoRA after every
# Bottleneck. Only the adapters, the FPN and the heads train.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/mslora.py']

model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))

optim_wrapper = _base_.mslora_optim_wrapper
