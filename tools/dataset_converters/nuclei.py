"""Tile the nuclei demo image shipped in the ``stardist`` wheel into COCO + seg maps.

    python tools/dataset_converters/nuclei.py [OUT_DIR] [--tile 256] [--stride 128]
        [--val-tiles 1] [--seed 0] [--min-area 8] [--force]

Source: ``stardist/data/images/img2d.tif`` (a 512x512 fluorescence image of nuclei
from the 2018 Data Science Bowl, stage 1 training set) and ``mask2d.tif`` (its
instance label map, 0 = background, k = nucleus k). Install the wheel without its
heavy dependencies: ``pip install --no-deps stardist==0.9.2``; it is never imported,
the two TIFFs are located by path.

Output layout (``OUT_DIR`` defaults to ``data/nuclei``)::

    images/{train,val}/nuclei_yYYY_xXXX.png     uint8 RGB tiles (YYY/XXX: tile origin)
    seg_maps/{train,val}/nuclei_yYYY_xXXX.png   uint8 labels: 0 background, 1 nucleus
    annotations/instances_{train,val}.json      COCO instances, one category nucleus=1
    README.txt                                  source, licence note and split

Split (deterministic, no pixel shared between train and val): the image is cut into
non-overlapping ``tile x tile`` blocks (2x2 quadrants for 512/256); ``val_tiles`` of
them, drawn with ``random.Random(seed)``, are the val tiles. Train tiles are every
window of a ``tile``-sized grid with step ``stride`` that does not intersect a val
block (stride 128, one val quadrant: 5 train tiles of the 9 windows; stride 256:
3). A nucleus lying across a val block's edge is clipped: its two parts land in
different splits, but no pixel is in both. Train tiles overlap each other when
stride < tile, which only adds training views.

Image: one percentile stretch (1 .. 99.8) over the whole image, so every tile shares
the same intensity mapping, replicated to three channels.

Instances: per tile, each label's pixels within the tile (clipped at the tile border),
dropped when fewer than ``min_area`` pixels remain. ``segmentation`` holds polygons
traced with ``cv2.findContours`` on the mask upsampled 2x (nearest), vertices at
the upsampled pixel centres in COCO coordinates (pixel (x, y) covers [x, x+1)); this
rasterises (``pycocotools``) back to exactly the source pixels. ``area`` is the pixel
count, ``bbox`` the tight pixel box ``[x, y, w, h]``; ``source_label`` (extra key)
the nucleus' label in ``mask2d.tif``.

The seg maps mark every nucleus pixel of the tile (including the few pixels of slivers
too small to keep as instances).
"""

import argparse
import importlib.util
import json
import os
import os.path as osp
import random
import shutil

import cv2
import numpy as np

SPLITS = ('train', 'val')
CATEGORIES = [dict(id=1, name='nucleus', supercategory='nucleus')]
SOURCE_NOTE = (
    'Source: the 2D nuclei demo image of the `stardist` Python package, version 0.9.2 '
    '(stardist/data/images/img2d.tif and mask2d.tif; stardist.data.test_image_nuclei_2d), '
    'a fluorescence microscopy image of cell nuclei with its instance labels from the '
    '2018 Kaggle Data Science Bowl (Caicedo et al., "Nucleus segmentation across imaging '
    'experiments: the 2018 Data Science Bowl", Nature Methods 16, 2019). The stardist '
    'package is distributed under the BSD-3-Clause licence. The Data Science Bowl 2018 '
    'data are published by the Broad Institute as BBBC038 under their own terms; check '
    'them, and cite the paper above, before redistributing these tiles.'
)


def find_source():
    """Return the paths of ``img2d.tif`` and ``mask2d.tif`` inside the stardist wheel."""
    spec = importlib.util.find_spec('stardist')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            'the `stardist` package is not installed; install its data without its '
            'dependencies: `pip install --no-deps stardist==0.9.2`'
        )
    folder = osp.join(list(spec.submodule_search_locations)[0], 'data', 'images')
    paths = osp.join(folder, 'img2d.tif'), osp.join(folder, 'mask2d.tif')
    for path in paths:
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} is missing from the stardist package')
    return paths


def load_source():
    """Return (uint16 image, int32 label map) of the demo, both HxW."""
    import tifffile

    img_path, mask_path = find_source()
    image = tifffile.imread(img_path)
    labels = tifffile.imread(mask_path).astype(np.int32)
    if image.ndim != 2 or image.shape != labels.shape:
        raise ValueError(f'unexpected shapes {image.shape} and {labels.shape}')
    return image, labels


def normalize_to_rgb(image, low=1.0, high=99.8):
    """Percentile-stretch ``image`` to uint8 and replicate it to three channels."""
    image = image.astype(np.float64)
    lo, hi = np.percentile(image, [low, high])
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    gray = np.round(scaled * 255.0).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _positions(size, tile, stride):
    pos = list(range(0, size - tile + 1, stride))
    if pos[-1] != size - tile:
        pos.append(size - tile)
    return pos


def plan_tiles(height, width, tile=256, stride=None, val_tiles=1, seed=0):
    """Return ``{'train': [(y, x), ...], 'val': [(y, x), ...]}`` tile origins.

    Val tiles are ``val_tiles`` non-overlapping tile-aligned blocks chosen with
    ``random.Random(seed)``; train tiles are the stride grid's windows that do not
    intersect any val block.
    """
    stride = tile if stride is None else stride
    if tile > min(height, width):
        raise ValueError(f'tile {tile} is larger than the image {height}x{width}')
    if stride <= 0:
        raise ValueError('stride must be positive')
    blocks = [
        (y, x) for y in range(0, height - tile + 1, tile) for x in range(0, width - tile + 1, tile)
    ]
    if not 1 <= val_tiles < len(blocks):
        raise ValueError(f'val_tiles must be in [1, {len(blocks) - 1}], got {val_tiles}')
    val = sorted(random.Random(seed).sample(blocks, val_tiles))

    def hits_val(y, x):
        return any(
            y < vy + tile and vy < y + tile and x < vx + tile and vx < x + tile for vy, vx in val
        )

    train = [
        (y, x)
        for y in _positions(height, tile, stride)
        for x in _positions(width, tile, stride)
        if not hits_val(y, x)
    ]
    if not train:
        raise ValueError('no train tile is left; lower val_tiles or stride')
    return dict(train=train, val=val)


def mask_to_polygons(mask):
    """COCO polygons of a binary mask, rasterising back to exactly its pixels.

    Contours are traced on the mask upsampled 2x so that thin parts keep an area;
    the vertices sit at the upsampled pixel centres, 1/4 pixel inside the true edge.
    """
    big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        if len(points) < 3:
            continue
        points = (points + 0.5) / 2.0
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def tile_annotations(label_tile, min_area=8):
    """Instance annotations (without ids) of one label-map tile, by ascending label."""
    anns = []
    for label in np.unique(label_tile):
        if label == 0:
            continue
        mask = label_tile == label
        area = int(mask.sum())
        if area < min_area:
            continue
        polygons = mask_to_polygons(mask)
        if not polygons:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        anns.append(
            dict(
                category_id=1,
                bbox=[float(v) for v in bbox],
                area=float(area),
                iscrowd=0,
                segmentation=polygons,
                source_label=int(label),
            )
        )
    return anns


def tile_name(y, x):
    return f'nuclei_y{y:03d}_x{x:03d}'


def _summary(out_dir, coco_by_split, skipped):
    summary = dict(out_dir=out_dir, skipped=skipped)
    for split in SPLITS:
        coco = coco_by_split[split]
        summary[f'{split}_tiles'] = len(coco['images'])
        summary[f'{split}_instances'] = len(coco['annotations'])
    return summary


def _existing(out_dir, params, plan):
    """The two COCO dicts when ``out_dir`` already holds this exact conversion."""
    coco_by_split = {}
    if not osp.isfile(osp.join(out_dir, 'README.txt')):
        return None
    for split in SPLITS:
        ann_path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        try:
            with open(ann_path) as f:
                coco = json.load(f)
        except (OSError, ValueError):
            return None
        if coco.get('info', {}).get('conversion') != params:
            return None
        stems = {tile_name(y, x) for y, x in plan[split]}
        if {osp.splitext(im['file_name'])[0] for im in coco['images']} != stems:
            return None
        for folder in ('images', 'seg_maps'):
            path = osp.join(out_dir, folder, split)
            present = set(os.listdir(path)) if osp.isdir(path) else set()
            if present != {s + '.png' for s in stems}:
                return None
        coco_by_split[split] = coco
    return coco_by_split


def _write_png(path, array):
    tmp = path + '.part.png'
    if not cv2.imwrite(tmp, array):
        raise OSError(f'cannot write {path}')
    os.replace(tmp, path)


def _write_json(path, obj):
    with open(path + '.part', 'w') as f:
        json.dump(obj, f)
    os.replace(path + '.part', path)


def convert_nuclei(
    out_dir, tile=256, stride=128, val_tiles=1, seed=0, min_area=8, force=False, verbose=True
):
    """Convert the stardist demo image into ``out_dir``; return a summary dict.

    The summary holds ``{train,val}_tiles`` and ``{train,val}_instances`` (and
    ``skipped``: True when a complete conversion with the same settings was found).
    """
    out_dir = osp.abspath(out_dir)
    image, labels = load_source()
    height, width = labels.shape
    plan = plan_tiles(height, width, tile, stride, val_tiles, seed)
    params = dict(
        tile=tile,
        stride=stride,
        val_tiles=val_tiles,
        seed=seed,
        min_area=min_area,
        val_blocks=[list(p) for p in plan['val']],
        version=1,
    )

    if not force:
        existing = _existing(out_dir, params, plan)
        if existing is not None:
            summary = _summary(out_dir, existing, skipped=True)
            if verbose:
                print(
                    f'nuclei: complete conversion found in {out_dir}, skipping '
                    f'(--force rewrites it)'
                )
                print(json.dumps(summary))
            return summary

    # start clean so no stale tile of other settings lingers (mmseg lists folders)
    for split in SPLITS:
        for folder in ('images', 'seg_maps'):
            path = osp.join(out_dir, folder, split)
            if osp.isdir(path):
                shutil.rmtree(path)
            os.makedirs(path)
        ann_path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        if osp.exists(ann_path):
            os.remove(ann_path)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)

    rgb = normalize_to_rgb(image)
    coco_by_split = {}
    for split in SPLITS:
        images, annotations = [], []
        for image_id, (y, x) in enumerate(plan[split], start=1):
            name = tile_name(y, x)
            label_tile = labels[y : y + tile, x : x + tile]
            _write_png(
                osp.join(out_dir, 'images', split, name + '.png'),
                np.ascontiguousarray(rgb[y : y + tile, x : x + tile, ::-1]),
            )
            _write_png(
                osp.join(out_dir, 'seg_maps', split, name + '.png'),
                (label_tile > 0).astype(np.uint8),
            )
            images.append(
                dict(
                    id=image_id,
                    file_name=name + '.png',
                    width=tile,
                    height=tile,
                    tile_x=x,
                    tile_y=y,
                )
            )
            for ann in tile_annotations(label_tile, min_area):
                ann.update(id=len(annotations) + 1, image_id=image_id)
                annotations.append(ann)
        coco_by_split[split] = dict(
            info=dict(description=f'stardist 2D nuclei demo, {split} tiles', conversion=params),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=CATEGORIES,
        )

    split_note = (
        f'Split: {tile}x{tile} tiles of the {height}x{width} image. Val: the '
        f'non-overlapping block(s) with origin (y, x) {plan["val"]} (chosen with '
        f'seed {seed}). Train: the windows of a stride-{stride} grid not touching any '
        f'val block, origins {plan["train"]}. No pixel is in both splits; a nucleus '
        f'across a val block edge is clipped into both.'
    )
    with open(osp.join(out_dir, 'README.txt'), 'w') as f:
        f.write(
            'Nuclei tiles written by tools/dataset_converters/nuclei.py (mmslora).\n\n'
            + SOURCE_NOTE
            + '\n\n'
            + split_note
            + '\n\n'
            'images/: uint8 RGB PNG tiles; seg_maps/: uint8 PNG, 0 background, '
            '1 nucleus; annotations/: COCO instances, category 1 = nucleus, '
            'polygon segmentation.\n'
        )
    # JSONs last: their presence marks a complete conversion
    for split in SPLITS:
        _write_json(
            osp.join(out_dir, 'annotations', f'instances_{split}.json'), coco_by_split[split]
        )

    summary = _summary(out_dir, coco_by_split, skipped=False)
    if verbose:
        print(json.dumps(summary))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', nargs='?', default='data/nuclei')
    parser.add_argument('--tile', type=int, default=256, help='tile side in pixels')
    parser.add_argument(
        '--stride',
        type=int,
        default=128,
        help='step of the train tile grid (< tile: overlapping tiles)',
    )
    parser.add_argument(
        '--val-tiles',
        type=int,
        default=1,
        help='number of non-overlapping tile-sized blocks kept for val',
    )
    parser.add_argument('--seed', type=int, default=0, help='picks the val blocks')
    parser.add_argument(
        '--min-area',
        type=int,
        default=8,
        help='drop clipped instances with fewer pixels in the tile',
    )
    parser.add_argument('--force', action='store_true', help='rewrite existing output')
    args = parser.parse_args(argv)
    convert_nuclei(
        args.out_dir,
        tile=args.tile,
        stride=args.stride,
        val_tiles=args.val_tiles,
        seed=args.seed,
        min_area=args.min_area,
        force=args.force,
    )


if __name__ == '__main__':
    main()
