# UperNet R-50 ADE20K 160k with a frozen ImageNet ResNetV1c-50 and MSLoRA after every
# Bottleneck. The segmentor's `pretrained` reaches the wrapped backbone.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py', '../_base_/mslora.py']

model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))

# AdamW at 1e-4 with weight decay 0.01, the schedule (poly, 160k) as upstream.
optim_wrapper = dict(
    _base_.mslora_optim_wrapper,
    optimizer=dict(_base_.mslora_optim_wrapper.optimizer, weight_decay=0.01),
)
