# UperNet on the embedded nuclei tiles (nucleus vs background) with the real ImageNet
# EfficientNet-Lite0 frozen inside MSLoRABackbone: an override of mmseg's UperNet.
_base_ = [
    'mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
    '../_base_/mslora.py',
    '../_base_/nuclei_semantic.py',
]
norm_cfg = dict(type='BN', requires_grad=True)  # one process on CPU: no SyncBN

model = dict(
    data_preprocessor=dict(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True, size=(256, 256)),
    pretrained=None,
    backbone=dict(
        _base_.mslora_backbone,
        backbone=dict(
            type='mmslora.EfficientNetLite',
            arch='lite0',
            out_indices=(1, 2, 4, 6),
            init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'),
        ),
        adapter=dict(_base_.mslora_adapter, hidden_dim=32),
    ),
    decode_head=dict(
        in_channels=[24, 40, 112, 320], channels=128, num_classes=2, norm_cfg=norm_cfg
    ),
    auxiliary_head=dict(in_channels=112, in_index=2, channels=64, num_classes=2, norm_cfg=norm_cfg),
)

train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        _base_.nuclei_seg_dataset,
        data_prefix=dict(img_path='images/train', seg_map_path='seg_maps/train'),
        pipeline=_base_.nuclei_seg_train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        _base_.nuclei_seg_dataset,
        data_prefix=dict(img_path='images/val', seg_map_path='seg_maps/val'),
        pipeline=_base_.nuclei_seg_test_pipeline,
    ),
)
test_dataloader = val_dataloader

max_iters = 200
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False),
]
optim_wrapper = dict(
    _base_.mslora_optim_wrapper,
    optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3, weight_decay=0.01),
)
default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1)
)
