# Fashion-MNIST classification with the real ImageNet EfficientNet-Lite0 frozen inside
# MSLoRABackbone: an override of mmpretrain's CIFAR-10 ResNet classifier config.
_base_ = [
    'mmpretrain::resnet/resnet18_8xb16_cifar10.py',
    '../_base_/mslora.py',
    '../_base_/fashion_mnist.py',
]

data_preprocessor = dict(num_classes=10, mean=[127.0] * 3, std=[128.0] * 3, to_rgb=False)
model = dict(
    backbone=dict(
        _base_.mslora_backbone,
        backbone=dict(
            type='mmslora.EfficientNetLite',
            arch='lite0',
            out_indices=(7,),  # the 1280-channel head conv
            init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'),
        ),
        adapter=dict(_base_.mslora_adapter, hidden_dim=32),
    ),
    head=dict(in_channels=1280, num_classes=10),
)

train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        _base_.fashion_dataset, split='train', indices=2000, pipeline=_base_.fashion_train_pipeline
    ),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        _base_.fashion_dataset, split='test', indices=1000, pipeline=_base_.fashion_test_pipeline
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=20, end=max_iters, eta_min=1e-6),
]
optim_wrapper = dict(
    _base_.mslora_optim_wrapper, optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3)
)
default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1)
)
log_processor = dict(by_epoch=False)
