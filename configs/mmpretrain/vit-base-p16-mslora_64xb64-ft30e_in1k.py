# ViT-B/16 classifier: frozen ImageNet ViT-B (mmpretrain's checkpoint), MSLoRA after
# every encoder layer (cls token passed through), a new head.
_base_ = [
    'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py',
    '../_base_/mslora.py',
    '../_base_/mslora_cls_finetune.py',
]
pretrained = 'https://download.openmmlab.com/mmclassification/v0/vit/finetune/vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth'  # noqa

model = dict(
    backbone=dict(
        _base_.mslora_backbone,
        backbone=_base_.model.backbone,
        pretrained=dict(checkpoint=pretrained, prefix='backbone.'),
    ),
    train_cfg=None,
)

optim_wrapper = dict(
    _base_.mslora_optim_wrapper, optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3)
)
param_scheduler = _base_.mslora_cls_param_scheduler
train_cfg = _base_.mslora_cls_train_cfg
