"""mmslora.utils.data_check: missing or empty data is named, with how to create it,
before a run builds anything."""

import os
import os.path as osp
import shutil

import pytest
from mmengine.config import Config

from mmslora.utils.data_check import DataNotFoundError, check_data
from mmslora_testing import CLS, DET, SEG, load_tool


def with_root(path, root):
    cfg = Config.fromfile(path)
    options = {
        f'{d}.dataset.data_root': root
        for d in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    }
    if 'val_evaluator' in cfg and 'ann_file' in cfg.val_evaluator:
        options['val_evaluator.ann_file'] = root + 'annotations/instances_val.json'
    cfg.merge_from_dict(options)
    return cfg


def test_detection_data_missing(tmp_path):
    root = str(tmp_path) + '/'
    with pytest.raises(DataNotFoundError) as info:
        check_data(with_root(DET, root))
    assert info.value.problems == [
        f"train_dataloader.dataset: annotation file '{root}annotations/"
        "instances_train.json' does not exist",
        f"train_dataloader.dataset: img folder '{root}images/train/' does not exist",
        f"val_dataloader.dataset: annotation file '{root}annotations/instances_val.json'"
        ' does not exist',
        f"val_dataloader.dataset: img folder '{root}images/val/' does not exist",
    ]
    assert f'python tools/dataset_converters/nuclei.py {root}' in str(info.value)  # the fix
    assert isinstance(info.value, FileNotFoundError)


def test_segmentation_image_folder_empty(nuclei_root, tmp_path):
    root = str(tmp_path / 'nuclei') + '/'
    shutil.copytree(nuclei_root, root)
    shutil.rmtree(root + 'images/train')
    os.makedirs(root + 'images/train')
    with pytest.raises(DataNotFoundError) as info:
        check_data(with_root(SEG, root))
    assert info.value.problems == [
        f"train_dataloader.dataset: img_path folder '{root}images/train' is empty"
    ]
    check_data(with_root(SEG, nuclei_root))  # the real data passes
    check_data(with_root(DET, nuclei_root))


@pytest.mark.usefixtures('one_thread')
def test_classification_data_missing_through_the_train_tool(tmp_path):
    """The check runs before the Runner is built: no model, no pretrained download."""
    root = str(tmp_path / 'nothing_here') + '/'
    train = load_tool('tools/train.py')
    with pytest.raises(DataNotFoundError) as info:
        train.main(
            [
                CLS,
                '--work-dir',
                str(tmp_path / 'work'),
                '--cfg-options',
                f'train_dataloader.dataset.data_root={root}',
                f'val_dataloader.dataset.data_root={root}',
            ]
        )
    assert info.value.problems == [f"train_dataloader.dataset: data_root '{root}' does not exist"]
    assert f'python tools/dataset_converters/fashion_mnist.py {root}' in str(info.value)
    assert not osp.exists(tmp_path / 'work')  # failed before the Runner made its work dir
