# UperNet Swin-T ADE20K 160k with a frozen ImageNet-1k Swin-T and MSLoRA after every
# Swin block.
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/mslora.py',
]

model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))

optim_wrapper = dict(
    _base_.mslora_optim_wrapper,
    optimizer=dict(_base_.mslora_optim_wrapper.optimizer, weight_decay=0.01),
)
