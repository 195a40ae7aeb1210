# The embedded nuclei data as two-class semantic maps (0 background, 1 nucleus) for
# mmseg, written by tools/dataset_converters/nuclei.py.
nuclei_root = 'data/nuclei/'
# how to create the data (mmslora.utils.data_check names it when files are missing)
data_preparation = 'python tools/dataset_converters/nuclei.py {data_root}'
nuclei_seg_metainfo = dict(classes=('background', 'nucleus'), palette=[(0, 0, 0), (220, 20, 60)])
# the dataset settings both splits share; a config adds data_prefix and pipeline
nuclei_seg_dataset = dict(
    _delete_=True,
    type='BaseSegDataset',
    data_root=nuclei_root,
    metainfo=nuclei_seg_metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
)
nuclei_seg_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackSegInputs'),
]
nuclei_seg_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
