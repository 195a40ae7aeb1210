# The demo: Mask R-CNN on the embedded nuclei tiles, with the real ImageNet
# EfficientNet-Lite0 frozen inside MSLoRABackbone. A small override of mmdet's
# Mask R-CNN config: backbone, neck inputs, one class, small anchors, data, schedule.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../_base_/mslora.py',
    '../_base_/nuclei_instance.py',
]

model = dict(
    # EfficientNet-Lite's normalisation: (x - 127) / 128 on RGB
    data_preprocessor=dict(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True),
    backbone=dict(
        _base_.mslora_backbone,
        backbone=dict(
            type='mmslora.EfficientNetLite',
            arch='lite0',
            out_indices=(1, 2, 4, 6),  # strides 4, 8, 16, 32
            init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'),
        ),
        # D = 32 keeps a 3.4 M-parameter backbone's adapters under 5%
        adapter=dict(_base_.mslora_adapter, hidden_dim=32),
    ),
    # a lighter head for CPU: 128-channel FPN, fewer proposals and sampled RoIs
    neck=dict(in_channels=[24, 40, 112, 320], out_channels=128),
    # nuclei are 10 to 34 pixels: anchors of 16 px at stride 4
    rpn_head=dict(in_channels=128, feat_channels=128, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            out_channels=128, roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2)
        ),
        bbox_head=dict(in_channels=128, fc_out_channels=512, num_classes=1),
        mask_roi_extractor=dict(
            out_channels=128, roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2)
        ),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=1),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=256))
    ),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=500), rcnn=dict(max_per_img=200)),
)

train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=_base_.nuclei_root,
        metainfo=_base_.nuclei_metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='images/train/'),
        pipeline=_base_.nuclei_train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(
        data_root=_base_.nuclei_root,
        metainfo=_base_.nuclei_metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='images/val/'),
        pipeline=_base_.nuclei_test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    ann_file=_base_.nuclei_root + 'annotations/instances_val.json', metric=['bbox', 'segm']
)
test_evaluator = val_evaluator

# short CPU schedule: AdamW on adapters + FPN + heads, warm-up then a step decay
# (benchmarks/results/demo_health.md has the measurements behind these settings)
max_iters = 150
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1,
    ),
]
# Adapters at 10x the lr of the FPN and heads: Adam moves a parameter by about lr per
# step, and this schedule's sum of lr is ~0.1, too little for the zero-started Proj.up
# (||H(F)|| / ||F|| ended at 0.5-1.3%) and for the Trans gate to leave its random init
# (mean 0.49-0.52). The zero start (F_hat = F at step 0) is untouched: only the step size.
optim_wrapper = dict(
    _base_.mslora_optim_wrapper,
    optimizer=dict(_base_.mslora_optim_wrapper.optimizer, lr=1e-3),
    paramwise_cfg=dict(custom_keys={'backbone.adapters': dict(lr_mult=10.0)}),
    clip_grad=dict(max_norm=10.0),
)
default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1)
)
# each log line the mean of the 10 iterations since the previous one (mmdet's runtime
# smooths over 50: the first lines showed the mean since iteration 1, which kept
# the first iterations' loss_mask of ~25 in view until iteration 50)
log_processor = dict(by_epoch=False, window_size=10)
auto_scale_lr = dict(enable=False)
# one seed: the same initial heads and adapters, data order and RoI sampling every run
# (unseeded, the first loss_mask alone ranged 10-52 over seeds, see demo_health.md)
randomness = dict(seed=0)
