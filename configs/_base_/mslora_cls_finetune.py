# Classification fine-tuning schedule shared by the mmpretrain configs: AdamW
# (lr 1e-3 for the adapters and the new head, weight decay 0.05), 1 warm-up epoch,
# cosine decay over 30 epochs. Our choice: the paper's text available to us does
# not give its classification schedule.
mslora_cls_param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(type='CosineAnnealingLR', T_max=29, by_epoch=True, begin=1, end=30, eta_min=1e-6),
]
mslora_cls_train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)
