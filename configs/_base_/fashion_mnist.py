# Debian's Fashion-MNIST (tools/dataset_converters/fashion_mnist.py), upsampled to
# 3 x 64 x 64 for ImageNet backbones. `indices` fixes the subset.
fashion_root = 'data/fashion_mnist/'
# how to create the data (mmslora.utils.data_check names it when files are missing)
data_preparation = 'python tools/dataset_converters/fashion_mnist.py {data_root}'
# the dataset settings both splits share; a config adds split, indices and pipeline
fashion_dataset = dict(_delete_=True, type='FashionMNIST', data_root=fashion_root, download=False)
fashion_train_pipeline = [
    dict(type='mmslora.GrayToRGB'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
fashion_test_pipeline = [
    dict(type='mmslora.GrayToRGB'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs'),
]
