"""The data of the protocol tasks: fixed disjoint fit / val / test subsets of real
images, decoded once (cached as a .pt file), and per-seed training batches that are the
same for every method."""

import os
import os.path as osp
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import ROOT
from .env import run_converter


def _idx(path: str) -> np.ndarray:
    """An (un-gzipped) idx file as a numpy array."""
    with open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W) grey images in 0..255 -> (N, 1, size, size) uint8, bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _split(n_total: int, sizes: Sequence[int], seed: int = 0) -> List[np.ndarray]:
    """Disjoint index sets of ``sizes`` from a fixed permutation of ``n_total``."""
    if sum(sizes) > n_total:
        raise ValueError(f'subsets {sizes} need {sum(sizes)} items, only {n_total} exist')
    order = np.random.RandomState(seed).permutation(n_total)
    bounds = np.cumsum([0] + list(sizes))
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def load_fashion(
    size: int,
    n_fit: int,
    n_val: int,
    n_test: int,
    root: str = osp.join(ROOT, 'data', 'fashion_mnist'),
) -> dict:
    """Fit and val from Fashion-MNIST's training split (disjoint, fixed), test from its
    test split; uint8 (N, 1, size, size) images and int64 labels."""
    files = (
        'train-images-idx3-ubyte',
        'train-labels-idx1-ubyte',
        't10k-images-idx3-ubyte',
        't10k-labels-idx1-ubyte',
    )
    if not all(osp.exists(osp.join(root, f)) for f in files):
        run_converter('fashion_mnist', root)
    train_x, train_y, test_x, test_y = (_idx(osp.join(root, f)) for f in files)
    fit, val = _split(len(train_x), (n_fit, n_val))
    (test,) = _split(len(test_x), (n_test,))
    return dict(
        fit=(_resize(train_x[fit], size), torch.from_numpy(train_y[fit].astype(np.int64))),
        val=(_resize(train_x[val], size), torch.from_numpy(train_y[val].astype(np.int64))),
        test=(_resize(test_x[test], size), torch.from_numpy(test_y[test].astype(np.int64))),
    )


def load_digits(size: int, n_fit: int, n_val: int, n_test: int) -> dict:
    """scikit-learn's 1797 8x8 digits (values 0..16, scaled to 0..255), split into
    disjoint fixed test / val / fit subsets."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as err:
        raise ImportError(
            'the digits task needs scikit-learn, which ships the data set in its wheel: '
            '`pip install scikit-learn` (or `pip install -r requirements/benchmarks.txt`); '
            'or leave the task out of --tasks.'
        ) from err
    digits = sk_digits()
    images = digits.images.astype(np.float32) * (255.0 / 16.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    test, val, fit = _split(len(images), (n_test, n_val, n_fit))
    return {
        k: (_resize(images[i], size), labels[i])
        for k, i in (('fit', fit), ('val', val), ('test', test))
    }


def load_nuclei(root: str = osp.join(ROOT, 'data', 'nuclei')) -> dict:
    """The nuclei tiles put back into the 512 x 512 image: uint8 (3, H, W) image and
    (H, W) labels (0 background, 1 nucleus) of the fit region (rows 0-255), the val
    region (bottom-left quadrant) and the test region (bottom-right quadrant)."""
    import cv2

    if not osp.isdir(osp.join(root, 'images', 'train')):
        run_converter('nuclei', root, verbose=False)
    image = np.zeros((512, 512, 3), np.uint8)
    labels = np.full((512, 512), 255, np.uint8)  # 255: not covered by any tile
    for split in ('train', 'val'):
        folder = osp.join(root, 'images', split)
        for name in sorted(os.listdir(folder)):
            y, x = map(int, re.match(r'nuclei_y(\d+)_x(\d+)\.png', name).groups())
            tile = cv2.imread(osp.join(folder, name), cv2.IMREAD_COLOR)[:, :, ::-1]
            seg = cv2.imread(osp.join(root, 'seg_maps', split, name), cv2.IMREAD_UNCHANGED)
            h, w = seg.shape
            image[y : y + h, x : x + w] = tile
            labels[y : y + h, x : x + w] = seg
    if (labels == 255).any():
        raise ValueError(
            f'{root}: the tiles do not cover the 512 x 512 image; rebuild it '
            f'with `python tools/dataset_converters/nuclei.py {root} --force`'
        )
    image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    labels = torch.from_numpy(labels.astype(np.int64))
    regions = dict(
        fit=(slice(0, 256), slice(0, 512)),
        val=(slice(256, 512), slice(0, 256)),
        test=(slice(256, 512), slice(256, 512)),
    )
    return {
        k: (image[:, ys, xs].contiguous(), labels[ys, xs].contiguous())
        for k, (ys, xs) in regions.items()
    }


def _crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int):
    """``images[b, ..., top[b]:top[b]+size, left[b]:left[b]+size]`` for every b."""
    rows = (top[:, None] + torch.arange(size, device=top.device))[:, :, None]
    cols = (left[:, None] + torch.arange(size, device=left.device))[:, None, :]
    index = torch.arange(len(top), device=top.device)[:, None, None]
    return (
        images[index, ..., rows, cols].movedim(-1, 1)
        if images.ndim == 4
        else images[index, rows, cols]
    )


class Batches:
    """Training batches of one task for one seed: the same order and augmentation for
    every method (everything random comes from one ``torch.Generator(seed)``).

    ``kind='cls'``: ``fit`` is (N, C, H, W) uint8 images and (N,) labels; an epoch-wise
    random order, random shifts of up to 1/16 of the side, horizontal flips when
    ``hflip``. ``kind='seg'``: ``fit`` is one (C, H, W) image and its (H, W) labels;
    random ``crop`` x ``crop`` windows with the 8 flips/transpositions."""

    def __init__(
        self,
        kind: str,
        fit: Tuple[torch.Tensor, torch.Tensor],
        batch: int,
        seed: int,
        crop: Optional[int] = None,
        hflip: bool = False,
    ):
        self.kind, self.batch, self.crop, self.hflip = kind, batch, crop, hflip
        self.x, self.y = fit
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def _rand(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.gen).to(self.x.device)

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        b = self.batch
        if self.kind == 'seg':
            _, h, w = self.x.shape
            top, left = self._rand(h - self.crop + 1, b), self._rand(w - self.crop + 1, b)
            x = _crops(self.x[None].expand(b, -1, -1, -1), top, left, self.crop)
            y = _crops(self.y[None].expand(b, -1, -1), top, left, self.crop)
            flip_h, flip_v, swap = (self._rand(2, b).bool() for _ in range(3))
            x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip_h[:, None, None], y.flip(-1), y)
            x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
            y = torch.where(flip_v[:, None, None], y.flip(-2), y)
            x = torch.where(swap[:, None, None, None], x.transpose(-1, -2), x)
            y = torch.where(swap[:, None, None], y.transpose(-1, -2), y)
            return x, y
        if self.pos + b > len(self.order):  # a new epoch
            self.order, self.pos = torch.randperm(len(self.x), generator=self.gen), 0
        idx = self.order[self.pos : self.pos + b].to(self.x.device)
        self.pos += b
        x, y = self.x[idx], self.y[idx]
        size = x.shape[-1]
        pad = 4 * size // 64  # shifts of up to 4 px at 64 px
        x = _crops(
            F.pad(x, [pad] * 4), self._rand(2 * pad + 1, b), self._rand(2 * pad + 1, b), size
        )
        if self.hflip:  # a mirrored garment is a garment; a digit is not
            flip = self._rand(2, b).bool()
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) -> EfficientNet-Lite's input, (x - 127) / 128 on RGB."""
    x = (x.float() - 127.0) / 128.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def cached(name: str, loader, cache_dir: Optional[str], **sizes) -> dict:
    """``loader(**sizes)``, kept in ``cache_dir`` as ``<name>_<sizes>.pt`` after the
    first call (decoding and resizing once per task)."""
    path = None
    if cache_dir:
        tag = '_'.join(f'{k}{v}' for k, v in sorted(sizes.items()))
        path = osp.join(cache_dir, f'{name}_{tag}.pt')
        if osp.exists(path):
            return torch.load(path)
    data = loader(**sizes)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save(data, path + '.part')
        os.replace(path + '.part', path)
    return data
