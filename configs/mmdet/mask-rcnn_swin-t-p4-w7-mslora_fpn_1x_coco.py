# Mask R-CNN Swin-T FPN 1x COCO with a frozen ImageNet Swin-T and MSLoRA after every
# Swin block.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '../_base_/mslora.py']

model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))

optim_wrapper = _base_.mslora_optim_wrapper
