# Swin-T classifier: frozen ImageNet Swin-T (mmpretrain's checkpoint), MSLoRA after
# every Swin block, a new head.
_base_ = [
    'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
    '../_base_/mslora.py',
    '../_base_/mslora_cls_finetune.py',
]
pretrained = 'https://download.openmmlab.com/mmclassification/v0/swin-transformer/swin_tiny_224_b16x64_300e_imagenet_20210616_090925-66df6be6.pth'  # noqa

model = dict(
    backbone=dict(
        _base_.mslora_backbone,
        backbone=_base_.model.backbone,
        pretrained=dict(checkpoint=pretrained, prefix='backbone.'),
    ),
    train_cfg=None,
)  # fine-tuning: no Mixup/CutMix

optim_wrapper = dict(
    _base_.mslora_optim_wrapper, optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3)
)
param_scheduler = _base_.mslora_cls_param_scheduler
train_cfg = _base_.mslora_cls_train_cfg
