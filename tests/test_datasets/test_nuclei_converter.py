"""tools/dataset_converters/nuclei.py on the real stardist demo image (CPU, ~2 s)."""

import importlib.util
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest

pytest.importorskip('pycocotools')
pytest.importorskip('tifffile')
from pycocotools.coco import COCO  # noqa: E402

TILE = 256
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_converter():
    # tools/ is not a package: import the script by path
    path = osp.join(ROOT, 'tools', 'dataset_converters', 'nuclei.py')
    spec = importlib.util.spec_from_file_location('mmslora_test_nuclei_converter', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def nuclei():
    module = load_converter()
    try:
        module.find_source()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return module


@pytest.fixture(scope='module')
def source(nuclei):
    image, labels = nuclei.load_source()
    return nuclei.normalize_to_rgb(image), labels


@pytest.fixture(scope='module')
def converted(nuclei, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('nuclei_conv'))
    summary = nuclei.convert_nuclei(out, verbose=False)
    return out, summary


def load_coco(out, split):
    return COCO(osp.join(out, 'annotations', f'instances_{split}.json'))


def stems(folder):
    return sorted(osp.splitext(f)[0] for f in os.listdir(folder))


def test_source_is_the_real_demo(source):
    rgb, labels = source
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # the stretch uses the full range but is not a binary image
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 100
    assert labels.shape == (512, 512)
    assert len(np.unique(labels)) - 1 == 125


def test_plan_stride_and_disjoint_split(nuclei):
    plan = nuclei.plan_tiles(512, 512, tile=256, stride=128, val_tiles=1, seed=0)
    assert plan['val'] == [(256, 256)]
    assert plan['train'] == [(0, 0), (0, 128), (0, 256), (128, 0), (256, 0)]
    # stride = tile: the three other quadrants
    assert nuclei.plan_tiles(512, 512, 256, 256, 1, 0)['train'] == [(0, 0), (0, 256), (256, 0)]
    # other seeds pick other quadrants, always disjoint from train
    picked = set()
    for seed in range(20):
        plan = nuclei.plan_tiles(512, 512, 256, 128, 1, seed)
        picked.add(plan['val'][0])
        assert plan == nuclei.plan_tiles(512, 512, 256, 128, 1, seed)
        ((vy, vx),) = plan['val']
        for y, x in plan['train']:
            assert not (y < vy + 256 and vy < y + 256 and x < vx + 256 and vx < x + 256)
        assert len(plan['train']) == 5
    assert len(picked) == 4
    with pytest.raises(ValueError):
        nuclei.plan_tiles(512, 512, 256, 128, val_tiles=4)


def test_files_and_summary(converted):
    out, summary = converted
    assert summary['skipped'] is False
    assert summary['train_tiles'] == 5 and summary['val_tiles'] == 1
    for split, n in (('train', 5), ('val', 1)):
        image_stems = stems(osp.join(out, 'images', split))
        assert len(image_stems) == n
        assert stems(osp.join(out, 'seg_maps', split)) == image_stems
        coco = load_coco(out, split)
        assert (
            sorted(osp.splitext(im['file_name'])[0] for im in coco.dataset['images']) == image_stems
        )
        assert len(coco.dataset['annotations']) == summary[f'{split}_instances']
    assert sorted(os.listdir(osp.join(out, 'annotations'))) == [
        'instances_train.json',
        'instances_val.json',
    ]
    readme = open(osp.join(out, 'README.txt')).read()
    for phrase in ('stardist', 'Data Science Bowl', 'BSD-3', 'Caicedo'):
        assert phrase in readme


def test_coco_annotations(converted, source):
    out, summary = converted
    rgb, labels = source
    per_tile = {}
    ious = []
    for split in ('train', 'val'):
        coco = load_coco(out, split)
        assert coco.dataset['categories'] == [dict(id=1, name='nucleus', supercategory='nucleus')]
        ann_ids = [a['id'] for a in coco.dataset['annotations']]
        assert ann_ids == list(range(1, len(ann_ids) + 1))
        for img in coco.dataset['images']:
            assert img['width'] == img['height'] == TILE
            y, x = img['tile_y'], img['tile_x']
            assert img['file_name'] == f'nuclei_y{y:03d}_x{x:03d}.png'
            # the PNG is the normalised source at that place (BGR on disk = gray)
            png = cv2.imread(osp.join(out, 'images', split, img['file_name']))
            np.testing.assert_array_equal(png, rgb[y : y + TILE, x : x + TILE])
            crop = labels[y : y + TILE, x : x + TILE]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
            per_tile[(split, y, x)] = len(anns)
            assert len({a['source_label'] for a in anns}) == len(anns)
            for ann in anns:
                assert ann['category_id'] == 1 and ann['iscrowd'] == 0
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])
                mask = coco.annToMask(ann).astype(bool)
                truth = crop == ann['source_label']
                ious.append((mask & truth).sum() / (mask | truth).sum())
                assert ann['area'] == truth.sum() >= 8
                ys, xs = np.nonzero(truth)
                assert ann['bbox'] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]
                bx, by, bw, bh = ann['bbox']
                assert bx >= 0 and by >= 0 and bx + bw <= TILE and by + bh <= TILE
            # every nucleus of the tile is kept except a few clipped slivers
            dropped = set(np.unique(crop)) - {0} - {a['source_label'] for a in anns}
            assert len(dropped) <= 3
            assert all((crop == label).sum() < 8 for label in dropped)
    # the polygons rasterise back to the source instances
    assert np.mean(ious) > 0.99 and min(ious) > 0.9
    train_counts = [n for (split, _, _), n in per_tile.items() if split == 'train']
    # measured: 35, 29, 33, 36, 40 (173) in train, 29 in val
    assert min(train_counts) >= 25 and 30 <= np.mean(train_counts) <= 40
    assert per_tile[('val', 256, 256)] >= 25
    assert sum(train_counts) == summary['train_instances']


def test_val_and_train_regions_are_disjoint(converted):
    out, _ = converted
    cover = {}
    for split in ('train', 'val'):
        region = np.zeros((512, 512), bool)
        for img in load_coco(out, split).dataset['images']:
            region[img['tile_y'] : img['tile_y'] + TILE, img['tile_x'] : img['tile_x'] + TILE] = (
                True
            )
        cover[split] = region
    assert not (cover['train'] & cover['val']).any()
    assert (cover['train'] | cover['val']).all()
    assert cover['val'].sum() == TILE * TILE


def test_semantic_maps_match_instances(converted, source):
    out, _ = converted
    _, labels = source
    for split in ('train', 'val'):
        coco = load_coco(out, split)
        for img in coco.dataset['images']:
            path = osp.join(out, 'seg_maps', split, img['file_name'])
            sem = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            assert sem.dtype == np.uint8 and sem.shape == (TILE, TILE)
            assert set(np.unique(sem).tolist()) == {0, 1}
            y, x = img['tile_y'], img['tile_x']
            crop = labels[y : y + TILE, x : x + TILE]
            # nucleus pixels == union of all instances' pixels within the tile
            np.testing.assert_array_equal(sem == 1, crop > 0)
            union = np.zeros((TILE, TILE), bool)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
                union |= coco.annToMask(ann).astype(bool)
            assert not (union & (sem == 0)).any()
            # only dropped slivers (< 8 px each, at most 3) are not covered
            assert (sem == 1).sum() - union.sum() < 24


def test_idempotent_and_force(nuclei, tmp_path, capsys):
    out = str(tmp_path / 'nuclei')
    first = nuclei.convert_nuclei(out)
    files = sorted(osp.join(d, f) for d, _, fs in os.walk(out) for f in fs)
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    capsys.readouterr()

    again = nuclei.convert_nuclei(out)
    assert again['skipped'] is True and 'skipping' in capsys.readouterr().out
    assert {k: v for k, v in again.items() if k != 'skipped'} == {
        k: v for k, v in first.items() if k != 'skipped'
    }
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes

    # an incomplete output is rebuilt
    os.remove(osp.join(out, 'seg_maps', 'train', 'nuclei_y000_x128.png'))
    rebuilt = nuclei.convert_nuclei(out, verbose=False)
    assert rebuilt['skipped'] is False
    assert sorted(osp.join(d, f) for d, _, fs in os.walk(out) for f in fs) == files

    assert nuclei.convert_nuclei(out, force=True, verbose=False)['skipped'] is False

    # other settings rewrite the folder without stale tiles (mmseg lists folders)
    wide = nuclei.convert_nuclei(out, stride=256, verbose=False)
    assert wide['skipped'] is False and wide['train_tiles'] == 3
    assert len(os.listdir(osp.join(out, 'images', 'train'))) == 3
    assert len(os.listdir(osp.join(out, 'seg_maps', 'train'))) == 3
    info = json.load(open(osp.join(out, 'annotations', 'instances_train.json')))['info']
    assert info['conversion']['stride'] == 256


def test_cli(nuclei, tmp_path, capsys):
    out = str(tmp_path / 'cli')
    nuclei.main([out, '--stride', '256', '--seed', '0'])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['train_tiles'] == 3 and summary['val_tiles'] == 1
    nuclei.main([out, '--stride', '256'])
    assert 'skipping' in capsys.readouterr().out


def test_mmdet_reads_the_annotations(converted):
    pytest.importorskip('mmcv.ops')
    from mmdet.datasets import CocoDataset

    out, summary = converted
    ds = CocoDataset(
        data_root=out,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='images/train/'),
        metainfo=dict(classes=('nucleus',)),
        pipeline=[],
        test_mode=False,
    )
    assert len(ds) == summary['train_tiles']
    assert sum(len(ds[i]['instances']) for i in range(len(ds))) == summary['train_instances']
    first = ds[0]
    assert first['img_path'].startswith(osp.join(out, 'images', 'train'))
    assert all(inst['bbox_label'] == 0 and inst['ignore_flag'] == 0 for inst in first['instances'])
