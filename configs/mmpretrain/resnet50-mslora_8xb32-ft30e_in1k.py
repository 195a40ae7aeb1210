# ResNet-50 classifier: frozen ImageNet R-50 (mmpretrain's checkpoint), MSLoRA after
# every Bottleneck, a new head; ImageNet-1k data pipeline as upstream.
_base_ = [
    'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    '../_base_/mslora.py',
    '../_base_/mslora_cls_finetune.py',
]
pretrained = 'https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth'  # noqa

model = dict(
    backbone=dict(
        _base_.mslora_backbone,
        backbone=_base_.model.backbone,
        pretrained=dict(checkpoint=pretrained, prefix='backbone.'),
    )
)

optim_wrapper = dict(
    _base_.mslora_optim_wrapper, optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3)
)
param_scheduler = _base_.mslora_cls_param_scheduler
train_cfg = _base_.mslora_cls_train_cfg
