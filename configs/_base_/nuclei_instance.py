# The embedded nuclei data (tools/dataset_converters/nuclei.py: 256x256 tiles of the
# stardist 2018 Data Science Bowl image, COCO instances) for mmdet.
nuclei_root = 'data/nuclei/'
# how to create the data (mmslora.utils.data_check names it when files are missing)
data_preparation = 'python tools/dataset_converters/nuclei.py {data_root}'
nuclei_metainfo = dict(classes=('nucleus',), palette=[(220, 20, 60)])
nuclei_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs'),
]
nuclei_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
