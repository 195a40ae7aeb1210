"""Should I use MSLoRA rather than LoRA, Mona, Adapter, BitFit, a linear probe or full
fine-tuning? A fair protocol on the real ImageNet EfficientNet-Lite0.

Every method of ``mmslora.models.peers.METHODS`` wraps the real ImageNet
EfficientNet-Lite0 (``efficientnet-lite0://imagenet``) in ``mmslora.MSLoRABackbone``
(built from mmengine config dicts through ``mmslora.registry.MODELS`` with
``apply_method``), and trains with a small head in a plain PyTorch loop. For every task
and method:

1. **lr selection**: one run (seed ``seeds[0]``) per learning rate of ``lrs`` (a grid a
   factor of about 3 apart), trained on the *fit* split and scored on a *validation*
   split carved from the training data; the chosen lr is the one with the best final
   validation score (ties: the smaller lr).
2. **test**: the chosen lr with every seed of ``seeds``; the model at the end of
   training is scored on the *test* split, which no choice ever sees. The selection run
   of ``seeds[0]`` at the chosen lr is that seed's test run (every run scores both
   splits at the end), so only the other seeds are extra runs.
3. **ablations** of MSLoRA (``ABLATIONS``) on ``ablation_tasks``, at MSLoRA's chosen
   lr of that task (not re-selected per variant, for the budget), every seed.

Same for every method: data (fixed subsets), data order and augmentation per seed (one
``torch.Generator(seed)`` drives batches and augmentation; the head is initialised
from ``torch.manual_seed(seed)`` before the backbone is built, so it is identical
across methods), steps, batch size, AdamW (weight decay 0.05 on every trainable
parameter, head included, at the method's lr) with a linear warm-up over the first 10%
of the steps and a cosine decay to 0.

What is measured per run (``records`` in the JSON):

* ``val_curve``: the validation score at 20, 50, 80 and 100% of the steps;
  ``val``: its last value; ``test``: the test score at the end. Scores: top-1 accuracy
  (%) for classification, mIoU (%) over the two classes (background, nucleus) of the
  whole validation / test region for segmentation.
* ``params``: :func:`mmslora.models.count_parameters` of backbone wrapper + head:
  ``backbone_trainable`` (adapters and unfrozen backbone parameters), ``trainable``
  (with the head), ``backbone``.
* ``train_s``: wall time of the training steps, evaluations excluded (on CUDA timed
  with synchronisation; the one CPU step run under the memory profiler counts at the
  mean time of the other steps).
* ``peak_mib``: peak training memory. CPU: bytes live at the start of the second step
  (parameters, buffers, AdamW state; gradients are freed after every step) plus the
  highest rise of the allocator's live bytes during that step (activations, gradients,
  temporaries), from the memory events of ``torch.profiler`` (``profile_memory=True``),
  as ``benchmarks/cost.py`` measures. CUDA: ``torch.cuda.max_memory_allocated`` over
  the run minus the bytes allocated before the model was built (the cached data on the
  device excluded). ``getrusage``'s max RSS was not used: it is a process-wide high-water
  mark and cannot give one run's peak after a larger run.

Reported (``<name>.md``, ``<name>.json``, ``<name>_convergence.png``): per task and
method the chosen lr with the validation score of every lr tried, test mean +- sample
std over seeds and every seed, the paired comparison MSLoRA minus the method over the
same seeds (:func:`paired_stats`: mean difference, its std, the paired t statistic and
two-sided p, and whether |mean| exceeds the std of the differences), parameters, time
and memory; the ablations paired against default MSLoRA; and the convergence of the
validation curves (:func:`flatness`: relative change over the last 20% of the steps).

Tasks (:data:`TASKS`):

* ``fashion``: Fashion-MNIST (``data/fashion_mnist``, Debian ``dataset-fashion-mnist``,
  mmpretrain's idx layout); fit / val from the training split, test from the test split,
  fixed random subsets, 28 px upsampled to the profile's size, random shifts of up to 1/16
  of the side and horizontal flips;
* ``digits``: scikit-learn's ``load_digits`` (the 1797 real 8x8 handwritten digits of
  the UCI optdigits set, shipped inside the scikit-learn wheel; ``pip install
  scikit-learn``, listed in ``requirements/benchmarks.txt``), 597 test / 240 val / 960 fit,
  upsampled, random shifts (no flips);
* ``nuclei``: nucleus-vs-background segmentation of the 2018 Data Science Bowl image in
  ``data/nuclei`` (``tools/dataset_converters/nuclei.py``, from the stardist wheel). The
  tiles are put back into the 512 x 512 image; fit: the top half (rows 0-255), val: the
  bottom-left quadrant, test: the bottom-right quadrant (the demo's held-out tile).
  Random crops of the fit region with the 8 flips/transpositions; mmseg's
  ``SegformerHead`` (built through mmseg's registry: 1x1 projections of the four
  scales to 64 channels, concatenated at stride 4, fused by a 1x1 conv + BN + ReLU)
  on strides 4-32 of the backbone; cross-entropy at the crop's resolution.

Profiles (:data:`PROFILES`): ``cpu`` (the 2-core grid, about 90 minutes), ``cuda``
(``--device cuda``: full-size subsets, longer schedules, bf16 autocast, several worker
processes sharing the GPU; written for one H200 and untested on a GPU) and ``quick``
(the smoke test's few steps).

Usage::

    .venv/bin/python benchmarks/evidence.py --threads 2                 # the CPU grid
    .venv/bin/python benchmarks/evidence.py --resume --threads 2        # go on after a stop
    .venv/bin/python benchmarks/evidence.py --device cuda               # one H200
    .venv/bin/python benchmarks/evidence.py --quick --out /tmp/ev       # smoke run
    .venv/bin/python benchmarks/evidence.py --report-only               # md/png from JSON
"""
import argparse
import copy
import datetime
import json
import math
import os
import os.path as osp
import platform
import re
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmslora  # noqa: E402,F401  (registers the modules)
from mmslora.models import count_parameters  # noqa: E402
from mmslora.models.peers import apply_method  # noqa: E402
from mmslora.registry import MODELS  # noqa: E402

ALL_METHODS = ('full', 'linear_probe', 'bitfit', 'lora', 'adapter', 'mona', 'mslora')
METHOD_NAMES = dict(full='Full fine-tuning', linear_probe='Linear probe', bitfit='BitFit',
                    lora='LoRA (r 8)', adapter='Adapter (D 32)', mona='Mona (D 32)',
                    mslora='MSLoRA (D 32, G 8)')
# per-method adapter sizes on this 3.4 M-parameter backbone, as in transfer.py
ADAPTER_OVERRIDES: Dict[str, dict] = dict(
    adapter=dict(hidden_dim=32), mona=dict(hidden_dim=32), mslora=dict(hidden_dim=32))

# MSLoRA ablations: MSLoRAAdapter arguments merged into MSLoRA's adapter config, or
# 'per_stage' (an adapter after the last block of each stage only)
ABLATIONS: Dict[str, dict] = {
    'combine=sum': dict(combine='sum'),
    'combine=proj': dict(combine='proj'),
    'combine=trans': dict(combine='trans'),
    'kernel_sizes=(3,)': dict(kernel_sizes=(3, )),
    'channel_attention=False': dict(channel_attention=False),
    'spatial_attention=False': dict(spatial_attention=False),
    'hidden_dim=16': dict(hidden_dim=16),
    'hidden_dim=64': dict(hidden_dim=64),
    'groups=1': dict(groups=1),
    'groups=4': dict(groups=4),
    'init=zero_scale': dict(init='zero_scale'),
    'init=gate_bias': dict(init='gate_bias'),
    'trans_stride=2': dict(trans_stride=2),
    'per_stage': 'per_stage',
}
DEFAULT_VARIANT = 'default'  # MSLoRA D 32, G 8, kernels (3, 5, 7), product, after every block

TASKS = dict(
    fashion=dict(kind='cls', title='Fashion-MNIST (10 classes)', metric='top-1 (%)',
                 classes=10),
    digits=dict(kind='cls', title='scikit-learn digits (10 classes)', metric='top-1 (%)',
                classes=10),
    nuclei=dict(kind='seg', title='Nuclei segmentation (2 classes)', metric='mIoU (%)',
                classes=2),
)

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
EVAL_AT = (0.2, 0.5, 0.8, 1.0)  # fractions of the steps with a validation
PROFILES = dict(
    cpu=dict(
        tasks=dict(fashion=dict(size=48, n_fit=2000, n_val=300, n_test=800, batch=32,
                                steps=60),
                   digits=dict(size=48, n_fit=960, n_val=240, n_test=597, batch=32,
                               steps=60),
                   nuclei=dict(crop=96, batch=8, steps=60)),
        lrs=LRS, seeds=(0, 1, 2), methods=ALL_METHODS, ablations=tuple(ABLATIONS),
        ablation_tasks=('fashion', 'nuclei'), workers=2, threads=1, amp=False,
        eval_batch=200),
    cuda=dict(
        tasks=dict(fashion=dict(size=64, n_fit=54000, n_val=6000, n_test=10000, batch=128,
                                steps=600),
                   digits=dict(size=64, n_fit=960, n_val=240, n_test=597, batch=64,
                               steps=300),
                   nuclei=dict(crop=128, batch=16, steps=400)),
        # 3e-2 too: on the CPU grid many methods chose 1e-2, the top of LRS
        lrs=LRS + (3e-2, ), seeds=(0, 1, 2), methods=ALL_METHODS, ablations=tuple(ABLATIONS),
        ablation_tasks=('fashion', 'nuclei'), workers=12, threads=1, amp=True,
        eval_batch=1000),
    quick=dict(
        tasks=dict(fashion=dict(size=32, n_fit=48, n_val=24, n_test=24, batch=8, steps=4,
                                eval_at=(0.75, 1.0)),
                   digits=dict(size=32, n_fit=48, n_val=24, n_test=24, batch=8, steps=4,
                               eval_at=(0.75, 1.0)),
                   nuclei=dict(crop=64, batch=2, steps=4, eval_at=(0.75, 1.0))),
        default_tasks=('fashion', 'nuclei'),  # digits needs scikit-learn, not in the suite's set-up
        lrs=(1e-3, 1e-2), seeds=(0, 1), methods=('linear_probe', 'mslora'),
        ablations=('hidden_dim=16', ), ablation_tasks=('fashion', ), workers=1,
        threads=1, amp=False, eval_batch=64),
)
FLAT_TOLERANCE = 0.01  # a curve is called flat when its last 20% change by <= 1% (relative)


# ------------------------------------------------------------------------ data
def _idx(path: str) -> np.ndarray:
    """An (un-gzipped) idx file as a numpy array."""
    with open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _run_converter(name: str, out_dir: str, **kwargs) -> None:
    """Create ``data/<name>`` with ``tools/dataset_converters/<name>.py`` (which names
    the install command when its source is missing)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f'_evidence_{name}', osp.join(ROOT, 'tools', 'dataset_converters', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getattr(module, f'convert_{name}')(out_dir, **kwargs)


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


def load_fashion(size: int, n_fit: int, n_val: int, n_test: int,
                 root: str = osp.join(ROOT, 'data', 'fashion_mnist')) -> dict:
    """Fit and val from Fashion-MNIST's training split (disjoint, fixed), test from its
    test split; uint8 (N, 1, size, size) images and int64 labels."""
    files = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
             't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
    if not all(osp.exists(osp.join(root, f)) for f in files):
        _run_converter('fashion_mnist', root)
    train_x, train_y, test_x, test_y = (_idx(osp.join(root, f)) for f in files)
    fit, val = _split(len(train_x), (n_fit, n_val))
    test, = _split(len(test_x), (n_test, ))
    return dict(fit=(_resize(train_x[fit], size), torch.from_numpy(train_y[fit].astype(np.int64))),
                val=(_resize(train_x[val], size), torch.from_numpy(train_y[val].astype(np.int64))),
                test=(_resize(test_x[test], size), torch.from_numpy(test_y[test].astype(np.int64))))


def load_digits(size: int, n_fit: int, n_val: int, n_test: int) -> dict:
    """scikit-learn's 1797 8x8 digits (values 0..16, scaled to 0..255), split into
    disjoint fixed test / val / fit subsets."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as err:
        raise ImportError(
            'the digits task needs scikit-learn, which ships the data set in its wheel: '
            '`pip install scikit-learn` (or `pip install -r requirements/benchmarks.txt`); '
            'or leave the task out with --tasks fashion nuclei.') from err
    digits = sk_digits()
    images = digits.images.astype(np.float32) * (255.0 / 16.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    test, val, fit = _split(len(images), (n_test, n_val, n_fit))
    return {k: (_resize(images[i], size), labels[i])
            for k, i in (('fit', fit), ('val', val), ('test', test))}


def load_nuclei(root: str = osp.join(ROOT, 'data', 'nuclei')) -> dict:
    """The nuclei tiles put back into the 512 x 512 image: uint8 (3, H, W) image and
    (H, W) labels (0 background, 1 nucleus) of the fit region (rows 0-255), the val
    region (bottom-left quadrant) and the test region (bottom-right quadrant)."""
    import cv2
    if not osp.isdir(osp.join(root, 'images', 'train')):
        _run_converter('nuclei', root, verbose=False)
    image = np.zeros((512, 512, 3), np.uint8)
    labels = np.full((512, 512), 255, np.uint8)  # 255: not covered by any tile
    for split in ('train', 'val'):
        folder = osp.join(root, 'images', split)
        for name in sorted(os.listdir(folder)):
            y, x = map(int, re.match(r'nuclei_y(\d+)_x(\d+)\.png', name).groups())
            tile = cv2.imread(osp.join(folder, name), cv2.IMREAD_COLOR)[:, :, ::-1]
            seg = cv2.imread(osp.join(root, 'seg_maps', split, name), cv2.IMREAD_UNCHANGED)
            h, w = seg.shape
            image[y:y + h, x:x + w] = tile
            labels[y:y + h, x:x + w] = seg
    if (labels == 255).any():
        raise ValueError(f'{root}: the tiles do not cover the 512 x 512 image; rebuild it '
                         f'with `python tools/dataset_converters/nuclei.py {root} --force`')
    image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    labels = torch.from_numpy(labels.astype(np.int64))
    regions = dict(fit=(slice(0, 256), slice(0, 512)), val=(slice(256, 512), slice(0, 256)),
                   test=(slice(256, 512), slice(256, 512)))
    return {k: (image[:, ys, xs].contiguous(), labels[ys, xs].contiguous())
            for k, (ys, xs) in regions.items()}


def task_data(task: str, settings: dict, cache_dir: Optional[str]) -> dict:
    """The task's decoded, resized subsets (cached in ``cache_dir`` as a .pt file)."""
    sizes = {k: v for k, v in settings.items() if k in ('size', 'n_fit', 'n_val', 'n_test')}
    path = None
    if cache_dir:
        tag = '_'.join(f'{k}{v}' for k, v in sorted(sizes.items()))
        path = osp.join(cache_dir, f'{task}_{tag}.pt')
        if osp.exists(path):
            return torch.load(path)
    data = (load_fashion(**sizes) if task == 'fashion' else load_digits(**sizes)
            if task == 'digits' else load_nuclei())
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        torch.save(data, path + '.part')
        os.replace(path + '.part', path)
    return data


def _crops(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int):
    """``images[b, ..., top[b]:top[b]+size, left[b]:left[b]+size]`` for every b."""
    rows = (top[:, None] + torch.arange(size, device=top.device))[:, :, None]
    cols = (left[:, None] + torch.arange(size, device=left.device))[:, None, :]
    index = torch.arange(len(top), device=top.device)[:, None, None]
    return images[index, ..., rows, cols].movedim(-1, 1) if images.ndim == 4 else \
        images[index, rows, cols]


class Batches:
    """Training batches of one task for one seed: the same order and augmentation for
    every method (everything random comes from one ``torch.Generator(seed)``)."""

    def __init__(self, task: str, fit: Tuple[torch.Tensor, torch.Tensor], batch: int,
                 seed: int, crop: Optional[int] = None):
        self.task, self.batch, self.crop = task, batch, crop
        self.x, self.y = fit
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def _rand(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n, ), generator=self.gen).to(self.x.device)

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        b = self.batch
        if TASKS[self.task]['kind'] == 'seg':
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
        idx = self.order[self.pos:self.pos + b].to(self.x.device)
        self.pos += b
        x, y = self.x[idx], self.y[idx]
        size = x.shape[-1]
        pad = 4 * size // 64  # shifts of up to 4 px at 64 px
        x = _crops(F.pad(x, [pad] * 4), self._rand(2 * pad + 1, b), self._rand(2 * pad + 1, b),
                   size)
        if self.task == 'fashion':  # a mirrored garment is a garment; a digit is not
            flip = self._rand(2, b).bool()
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) -> EfficientNet-Lite's input, (x - 127) / 128 on RGB."""
    x = (x.float() - 127.0) / 128.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ----------------------------------------------------------------------- model
def backbone_cfg(kind: str) -> dict:
    """The real ImageNet EfficientNet-Lite0: the 1280-channel head conv for
    classification, strides 4, 8, 16, 32 (24, 40, 112, 320 channels) for segmentation."""
    return dict(type='mmslora.EfficientNetLite', arch='lite0',
                out_indices=(7, ) if kind == 'cls' else (1, 2, 4, 6),
                init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'))


def per_stage_blocks(backbone: dict) -> List[dict]:
    """``blocks=`` for MSLoRABackbone naming the last block of each stage: the blocks
    the wrapper finds by default, grouped by their parent module, the last of each."""
    from mmslora.models.block_presets import find_blocks
    bare = MODELS.build(dict(backbone, init_cfg=None))
    last: Dict[str, Tuple[str, str]] = {}
    for name, (layout, _) in find_blocks(bare).items():
        last[name.rpartition('.')[0]] = (name, layout)
    return [dict(pattern=re.escape(name), layout=layout) for name, layout in last.values()]


def wrapper_config(kind: str, method: str, variant: str = DEFAULT_VARIANT) -> dict:
    """The MSLoRABackbone config of ``method`` (and MSLoRA ``variant``)."""
    backbone = backbone_cfg(kind)
    overrides = {}
    if method in ADAPTER_OVERRIDES:
        overrides['adapter'] = dict(ADAPTER_OVERRIDES[method])
    wrapper = dict(type='mmslora.MSLoRABackbone', backbone=backbone)
    if variant != DEFAULT_VARIANT:
        if method != 'mslora':
            raise ValueError(f'ablation {variant!r} is of MSLoRA, not of {method!r}')
        change = ABLATIONS[variant]
        if change == 'per_stage':
            wrapper['blocks'] = per_stage_blocks(backbone)
        else:
            overrides['adapter'].update(change)
    return apply_method(wrapper, method, **overrides)


class Model(nn.Module):
    """The wrapped backbone and a head: pooled features -> Linear for classification;
    mmseg's SegformerHead on the four scales for segmentation (logits at stride 4)."""

    def __init__(self, kind: str, wrapper: dict, classes: int, seed: int):
        super().__init__()
        self.kind = kind
        torch.manual_seed(seed)  # the same head for every method of a seed
        if kind == 'cls':
            self.head = nn.Linear(1280, classes)
        else:
            import mmseg.models  # noqa: F401  (registers the heads)
            from mmseg.registry import MODELS as SEG_MODELS
            self.head = SEG_MODELS.build(dict(
                type='SegformerHead', in_channels=[24, 40, 112, 320], in_index=[0, 1, 2, 3],
                channels=64, num_classes=classes, norm_cfg=dict(type='BN'),
                align_corners=False))
            self.head.init_weights()
        torch.manual_seed(seed + 1000)
        self.backbone = MODELS.build(wrapper)
        self.backbone.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        if self.kind == 'cls':
            return self.head(features[0].mean((2, 3)))
        return self.head(list(features))


def loss_fn(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(normalise(x))
    if model.kind == 'seg':
        logits = F.interpolate(logits, size=y.shape[-2:], mode='bilinear', align_corners=False)
    return F.cross_entropy(logits.float(), y)


@torch.no_grad()
def evaluate(model: Model, split: Tuple[torch.Tensor, torch.Tensor], batch: int,
             amp: bool) -> float:
    """Top-1 accuracy (%) or mIoU (%, mean over the classes of the region)."""
    model.eval()
    x, y = split
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        if model.kind == 'cls':
            correct = sum(int((model(normalise(x[i:i + batch])).argmax(1) == y[i:i + batch])
                              .sum()) for i in range(0, len(x), batch))
            score = 100.0 * correct / len(x)
        else:
            logits = model(normalise(x[None]))
            pred = F.interpolate(logits.float(), size=y.shape, mode='bilinear',
                                 align_corners=False).argmax(1)[0]
            ious = []
            for c in range(logits.shape[1]):  # classes absent from both are left out
                union = int(((pred == c) | (y == c)).sum())
                if union:
                    ious.append(int(((pred == c) & (y == c)).sum()) / union)
            score = 100.0 * sum(ious) / len(ious)
    model.train()
    return score


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cpu_step_peak(step) -> int:
    """Highest rise of the CPU allocator's live bytes during ``step()``, from the memory
    events of ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    start = (lambda e: e.start_ns()) if events and hasattr(events[0], 'start_ns') else \
        (lambda e: e.start_us())
    live = peak = 0
    for event in sorted(events, key=start):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def run_one(job: dict, data: dict, settings: dict, device: torch.device, amp: bool,
            eval_batch: int) -> dict:
    """Train one (task, method, variant, lr, seed) and return its record."""
    task, kind = job['task'], TASKS[job['task']]['kind']
    steps, start = settings['steps'], time.perf_counter()
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    model = Model(kind, wrapper_config(kind, job['method'], job['variant']),
                  TASKS[task]['classes'], job['seed']).to(device)
    model.train()
    report = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job['lr'], weight_decay=0.05)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) /
                                                                  max(1, steps - warm))))
    split = data  # on the device already
    batches = Batches(task, split['fit'], settings['batch'], job['seed'],
                      crop=settings.get('crop'))
    # the validation curve; an ablation run is scored at its end only (for the budget)
    eval_at = (1.0, ) if job.get('phase') == 'ablation' else settings.get('eval_at', EVAL_AT)
    eval_steps = sorted({max(1, round(f * steps)) for f in eval_at})
    curve, train_s, prof_s, peak, diverged = [], 0.0, None, None, False

    def step():
        x, y = batches.next()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        if i == 2 and not cuda:  # the memory probe: the second step, under the profiler
            t = time.perf_counter()
            persistent = _tensor_bytes(list(model.parameters()) + list(model.buffers()) + [
                v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)])
            loss_box = []
            peak = persistent + cpu_step_peak(lambda: loss_box.append(step()))
            loss = loss_box[0]
            prof_s = time.perf_counter() - t
        else:
            loss = step()
        if not math.isfinite(loss):
            diverged = True
        if i in eval_steps or diverged:
            if cuda:
                torch.cuda.synchronize(device)
            train_s += time.perf_counter() - t0
            curve.append([i, evaluate(model, split['val'], eval_batch, amp)])
            t0 = time.perf_counter()
        if diverged:
            break
    if prof_s is not None and steps > 2:  # count the profiled step at the others' mean
        train_s += (train_s - prof_s) / (curve[-1][0] - 1) - prof_s
    test = evaluate(model, split['test'], eval_batch, amp)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base_bytes
    return dict(job, key=job_key(job), steps=steps, val_curve=curve, val=curve[-1][1],
                test=test, diverged=diverged, train_s=round(train_s, 2),
                wall_s=round(time.perf_counter() - start, 2),
                peak_mib=round(peak / 2 ** 20, 1) if peak is not None else None,
                params=dict(total=report.total, trainable=report.trainable,
                            backbone=report.backbone, adapter=report.adapter,
                            backbone_trainable=report.backbone_trainable),
                notes=list(report.notes))


# ----------------------------------------------------------------------- stats
def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired comparison of ``a`` and ``b`` (the same seeds, in the same order):
    differences d = a - b, their mean and sample std, the paired t statistic
    mean / (std / sqrt(n)) with n - 1 degrees of freedom and its two-sided p (None
    without scipy or for n < 2), and ``exceeds_spread``: |mean| > std (|t| > sqrt(n))."""
    if len(a) != len(b) or not a:
        raise ValueError(f'paired_stats needs two equally long, non-empty lists: {a}, {b}')
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    std = statistics.stdev(d) if n > 1 else 0.0
    if std <= 1e-9 * max(1.0, abs(mean)):  # equal differences up to float rounding
        std = 0.0
    if n < 2:
        t = None
    elif std > 0:
        t = mean / (std / math.sqrt(n))
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    p = None
    if t is not None:
        try:
            from scipy.stats import t as student_t
            p = float(2 * student_t.sf(abs(t), n - 1))
        except ImportError:
            pass
    return dict(n=n, diffs=d, mean=mean, std=std, t=t, p=p,
                exceeds_spread=abs(mean) > std if n > 1 else None)


def flatness(curve: Sequence[Sequence[float]], last: float = 0.2) -> dict:
    """Change of a validation curve ``[[step, score], ...]`` over its last ``last`` of
    the steps: ``rel_change`` = (final - value at (1 - last) of the steps) / |final|,
    ``range`` = max - min of the points in that window (score units)."""
    final_step = curve[-1][0]
    window = [v for s, v in curve if s >= (1 - last) * final_step - 1e-9]
    start, final = window[0], window[-1]
    return dict(rel_change=(final - start) / abs(final) if final else math.inf,
                range=max(window) - min(window), start=start, final=final,
                flat=abs(final - start) <= FLAT_TOLERANCE * abs(final))


def check_amp(device: torch.device, methods: Sequence[str]) -> None:
    """One training step of each method under bf16 autocast on a tiny input, so that a
    method whose backward does not take bf16 stops the grid before it starts, by name."""
    failed = {}
    for method in methods:
        model = Model('cls', wrapper_config('cls', method), 10, 0).to(device).train()
        x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device=device)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_fn(model, x, torch.zeros(2, dtype=torch.long, device=device))
            if loss.requires_grad:
                loss.backward()
        except RuntimeError as err:
            failed[method] = str(err).splitlines()[0]
    if failed:
        raise SystemExit(f'bf16 autocast fails in the training step of {failed}; run with '
                         f'--amp off (fp32), or fix the method for autocast.')


# ------------------------------------------------------------------------ grid
def job_key(job: dict) -> str:
    return f"{job['task']}/{job['method']}/{job['variant']}/lr{job['lr']:g}/s{job['seed']}"


def planned_runs(profile: dict) -> int:
    """How many runs the whole grid of ``profile`` has."""
    n_tasks, n_methods, n_seeds = (len(profile[k]) for k in ('tasks', 'methods', 'seeds'))
    ablation_tasks = [t for t in profile['ablation_tasks'] if t in profile['tasks']]
    return (n_tasks * n_methods * (len(profile['lrs']) + n_seeds - 1)
            + len(ablation_tasks) * len(profile['ablations']) * n_seeds)


def selection_jobs(profile: dict) -> List[dict]:
    seed = profile['seeds'][0]
    return [dict(task=t, method=m, variant=DEFAULT_VARIANT, lr=lr, seed=seed, phase='select')
            for t in profile['tasks'] for m in profile['methods'] for lr in profile['lrs']]


def choose_lr(records: Sequence[dict], task: str, method: str, lrs: Sequence[float],
              seed: int) -> Tuple[Optional[float], Dict[float, float]]:
    """The lr with the best final validation score of the selection runs (the smaller
    lr on a tie), and the score of every lr tried; None until all have run."""
    scores = {r['lr']: r['val'] for r in records
              if (r['task'], r['method'], r['variant'], r['seed']) ==
              (task, method, DEFAULT_VARIANT, seed) and r['lr'] in lrs}
    if len(scores) < len(lrs):
        return None, scores
    best = max(sorted(scores), key=lambda lr: scores[lr])  # max keeps the first (smallest)
    return best, scores


def second_phase_jobs(profile: dict, records: Sequence[dict]) -> List[dict]:
    """Test runs of the other seeds at each method's chosen lr (all tasks first), then
    the ablations at MSLoRA's chosen lr."""
    tests, ablations = [], []
    for task in profile['tasks']:
        chosen = {m: choose_lr(records, task, m, profile['lrs'], profile['seeds'][0])[0]
                  for m in profile['methods']}
        for method in profile['methods']:
            tests += [dict(task=task, method=method, variant=DEFAULT_VARIANT, lr=chosen[method],
                           seed=s, phase='test') for s in profile['seeds'][1:]]
        if task in profile['ablation_tasks']:
            ablations += [dict(task=task, method='mslora', variant=v, lr=chosen['mslora'],
                               seed=s, phase='ablation')
                          for s in profile['seeds'] for v in profile['ablations']]
    return tests + ablations


_WORKER: dict = {}


def _worker_init(profile: dict, device: str, threads: int, cache_dir: str) -> None:
    torch.set_num_threads(threads)
    _quiet()
    _WORKER.update(profile=profile, device=torch.device(device), cache_dir=cache_dir, data={})


def _worker_run(job: dict) -> dict:
    """Run ``job`` in this process (a pool worker, or the main process)."""
    profile, data = _WORKER['profile'], _WORKER['data']
    task = job['task']
    if task not in data:  # loaded once per process, kept on the device
        data[task] = {k: (x.to(_WORKER['device']), y.to(_WORKER['device'])) for k, (x, y)
                      in task_data(task, profile['tasks'][task], _WORKER['cache_dir']).items()}
    try:
        return run_one(job, data[task], profile['tasks'][task], _WORKER['device'],
                       profile['amp'], profile['eval_batch'])
    except TypeError as err:  # an ablation argument MSLoRAAdapter does not have (yet)
        if job['variant'] == DEFAULT_VARIANT or 'unexpected keyword argument' not in str(err):
            raise
        return dict(job, key=job_key(job), error=f'{type(err).__name__}: {err}')


def run_jobs(jobs: List[dict], pool, on_record, log=None) -> None:
    """Run ``jobs`` in this process (``pool`` None) or in the ``pool`` of worker
    processes, and call ``on_record(record)`` after each."""
    if pool is None:
        results = (_worker_run(job) for job in jobs)
    else:
        from concurrent.futures import as_completed
        results = (f.result() for f in as_completed([pool.submit(_worker_run, j) for j in jobs]))
    for i, record in enumerate(results):
        (log or (lambda line: print(line, flush=True)))(_progress(record, i + 1, len(jobs)))
        on_record(record)


def make_pool(workers: int):
    """``workers`` spawned processes (one pool for the whole grid, so that all its runs use
    the code read at the start), or None for ``workers <= 1``."""
    if workers <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                               initializer=_worker_init,
                               initargs=(_WORKER['profile'], str(_WORKER['device']),
                                         _WORKER['threads'], _WORKER['cache_dir']))


def _progress(record: dict, i: int, n: int) -> str:
    if 'error' in record:
        return f'[{i}/{n}] {record["key"]}: skipped ({record["error"]})'
    return (f'[{i}/{n}] {record["key"]}: val {record["val"]:.2f} test {record["test"]:.2f} '
            f'train {record["train_s"]:.1f}s wall {record["wall_s"]:.1f}s '
            f'peak {record["peak_mib"]} MiB' + (' DIVERGED' if record['diverged'] else ''))


def _quiet() -> None:
    """mmengine's per-parameter initialisation log off (warnings stay)."""
    import warnings
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mmslora_evidence', log_level='WARNING')
    for message in ('For binary segmentation', '``build_loss`` would be deprecated',
                    'Default ``avg_non_ignore``'):  # mmseg's, about its loss we do not use
        warnings.filterwarnings('ignore', message=message)


# ---------------------------------------------------------------------- report
def summarize(records: Sequence[dict], profile: dict) -> dict:
    """Chosen lrs, test statistics, paired comparisons, ablations and flatness."""
    ok = [r for r in records if 'error' not in r]
    seeds, lrs = list(profile['seeds']), profile['lrs']
    out = dict(tasks={}, ablations={}, skipped=[r['key'] for r in records if 'error' in r])
    for task in profile['tasks']:
        rows = {}
        for method in profile['methods']:
            lr, scores = choose_lr(ok, task, method, lrs, seeds[0])
            runs = {r['seed']: r for r in ok if (r['task'], r['method'], r['variant'],
                                                 r['lr']) == (task, method, DEFAULT_VARIANT, lr)}
            rows[method] = _row(runs, seeds, lr=lr, val_by_lr=scores)
        ref = rows.get('mslora')
        for method, row in rows.items():
            row['mslora_minus'] = _pair(ref, row) if method != 'mslora' else None
        done = [m for m in rows if rows[m]['test_mean'] is not None]
        best = max(done, key=lambda m: rows[m]['test_mean']) if done else None
        out['tasks'][task] = dict(rows=rows, best=best)
        if task in profile['ablation_tasks'] and ref is not None:
            variants = {}
            for v in profile['ablations']:
                runs = {r['seed']: r for r in ok if (r['task'], r['method'], r['variant'],
                                                     r['lr']) == (task, 'mslora', v, ref['lr'])}
                row = _row(runs, seeds, lr=ref['lr'])
                row['minus_default'] = _pair(row, ref)
                variants[v] = row
            out['ablations'][task] = variants
    return out


def _row(runs: Dict[int, dict], seeds: Sequence[int], **extra) -> dict:
    """Test mean / std over the seeds that ran, with params, time, memory and curves."""
    have = [s for s in seeds if s in runs]
    tests = [runs[s]['test'] for s in have]
    curves = [runs[s]['val_curve'] for s in have]
    row = dict(extra, seeds=have, per_seed=tests,
               test_mean=statistics.fmean(tests) if tests else None,
               test_std=statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
               complete=len(have) == len(seeds), diverged=[s for s in have if runs[s]['diverged']])
    if have:
        peaks = [runs[s]['peak_mib'] for s in have if runs[s]['peak_mib'] is not None]
        curve = _mean_curve(curves)
        row.update(params=runs[have[0]]['params'],
                   train_s=statistics.fmean(runs[s]['train_s'] for s in have),
                   peak_mib=max(peaks) if peaks else None, val_curve=curve,
                   flatness=flatness(curve) if len(curve) > 1 else None)
    return row


def _mean_curve(curves: List[list]) -> List[list]:
    n = min(len(c) for c in curves)
    return [[curves[0][i][0], statistics.fmean(c[i][1] for c in curves)] for i in range(n)]


def _pair(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """:func:`paired_stats` of a - b over the seeds both have."""
    if not a or not b or not a['seeds'] or not b['seeds']:
        return None
    common = [s for s in a['seeds'] if s in b['seeds']]
    if not common:
        return None
    va = dict(zip(a['seeds'], a['per_seed']))
    vb = dict(zip(b['seeds'], b['per_seed']))
    return dict(paired_stats([va[s] for s in common], [vb[s] for s in common]), seeds=common)


def _f(value, fmt='.2f', none='-'):
    return none if value is None else format(value, fmt)


def _pair_text(p: Optional[dict]) -> str:
    if not p:
        return '-'
    t = '-' if p['t'] is None else ('inf' if math.isinf(p['t']) else f"{p['t']:+.2f}")
    mark = ' *' if p['exceeds_spread'] else ''
    return (f"{p['mean']:+.2f} +- {p['std']:.2f} (t {t}, p {_f(p['p'], '.3f')}){mark}")


def write_markdown(path: str, summary: dict, meta: dict) -> None:
    profile = meta['profile']
    lines = ['# Evidence: MSLoRA against its peers at each method\'s own learning rate', '',
             f"Date: {meta['date']}  ",
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
             f"{meta['threads']} thread(s) x {meta['workers']} worker(s); wall time "
             f"{meta['wall_min']:.1f} min; mmslora at commit "
             f"{meta.get('mmslora_commit') or 'not recorded'}  ",
             f"Runs: {meta.get('runs_done', '?')} of {planned_runs(profile)} planned" + (
                 '' if meta.get('runs_done') == planned_runs(profile) else
                 ' (in progress or cut short; `--resume` goes on)') + '  ',
             f"Protocol: lr from {list(profile['lrs'])} chosen on the validation split "
             f"(seed {profile['seeds'][0]}), then seeds {list(profile['seeds'])} at it on the "
             f"test split; AdamW (wd 0.05), 10% warm-up, cosine; bf16 autocast: "
             f"{profile['amp']}.", '',
             '`MSLoRA - X`: paired over the seeds (same data order and head init per seed): '
             'mean difference +- std of the differences, paired t and two-sided p; `*` '
             'where |mean| exceeds the std of the differences. Train s: training steps '
             'without evaluation, mean over seeds; peak: training memory of one step '
             f"({meta['memory']}).", '']
    if summary['skipped']:
        lines += [f"Skipped (the adapter does not take the argument yet): "
                  f"{', '.join(summary['skipped'])}", '']
    for task, result in summary['tasks'].items():
        info, settings = TASKS[task], profile['tasks'][task]
        lines += [f"## {info['title']}", '',
                  f"Settings: {settings}; metric {info['metric']}.", '',
                  f"| method | lr (val {info['metric']} at each lr tried) | test mean +- std |"
                  f" per seed | MSLoRA - method | trainable in backbone (all) | train s |"
                  f" peak MiB | val change, last 20% |",
                  '|---|---|---|---|---|---|---|---|---|']
        for method, row in result['rows'].items():
            tried = ', '.join(('**' if lr == row['lr'] else '') + f'{lr:g}: {v:.1f}' +
                              ('**' if lr == row['lr'] else '')
                              for lr, v in sorted(row['val_by_lr'].items()))
            if row['lr'] is not None and row['lr'] in (min(profile['lrs']), max(profile['lrs'])):
                tried += ' (edge of the grid)'
            mean = '-' if row['test_mean'] is None else \
                f"{row['test_mean']:.2f} +- {row['test_std']:.2f}"
            if method == result['best']:
                mean = f'**{mean}**'
            params = row.get('params')
            ptext = (f"{params['backbone_trainable']:,d} ({params['trainable']:,d})"
                     if params else '-')
            flat = row.get('flatness')
            lines.append(
                f"| {METHOD_NAMES[method]} | {tried or '-'} | {mean} | "
                f"{', '.join(f'{v:.2f}' for v in row['per_seed']) or '-'}"
                f"{' (diverged: %s)' % row['diverged'] if row['diverged'] else ''} | "
                f"{_pair_text(row['mslora_minus']) if method != 'mslora' else ''} | {ptext} | "
                f"{_f(row.get('train_s'), '.1f')} | {_f(row.get('peak_mib'), '.0f')} | "
                f"{_f(100 * flat['rel_change'], '+.2f') + '%' if flat else '-'} |")
        best = result['best']
        if best:
            flat = result['rows'][best]['flatness']
            lines += ['', f"Best test mean: {METHOD_NAMES[best]}. Its validation curve "
                      f"(mean over seeds, chosen lr) changes by {100 * flat['rel_change']:+.2f}% "
                      f"({flat['start']:.2f} -> {flat['final']:.2f}, range {flat['range']:.2f}) "
                      f"over the last 20% of the steps: "
                      f"{'flat' if flat['flat'] else 'NOT flat'} at the "
                      f"{100 * FLAT_TOLERANCE:.0f}% tolerance.", '']
        lines += [_verdict(result['rows']), '']
    for task, variants in summary['ablations'].items():
        ref = summary['tasks'][task]['rows']['mslora']
        lines += [f"## MSLoRA ablations: {TASKS[task]['title']}", '',
                  f"At MSLoRA's chosen lr ({_f(ref['lr'], 'g')}); default: D 32, G 8, kernels "
                  f"(3, 5, 7), combine product, init zero_up, after every block: "
                  f"{_f(ref['test_mean'])} +- {_f(ref['test_std'])}.", '',
                  '| variant | test mean +- std | per seed | variant - default |'
                  ' trainable in backbone | train s | peak MiB |',
                  '|---|---|---|---|---|---|---|']
        for v, row in variants.items():
            mean = '-' if row['test_mean'] is None else \
                f"{row['test_mean']:.2f} +- {row['test_std']:.2f}"
            params = row.get('params')
            lines.append(
                f"| {v} | {mean} | {', '.join(f'{x:.2f}' for x in row['per_seed']) or '-'} | "
                f"{_pair_text(row['minus_default'])} | "
                f"{format(params['backbone_trainable'], ',d') if params else '-'} | "
                f"{_f(row.get('train_s'), '.1f')} | {_f(row.get('peak_mib'), '.0f')} |")
        lines.append('')
    lines += [f"Curves: `{osp.basename(meta['plot'])}`; every run: "
              f"`{osp.basename(meta['json'])}`.", '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def _verdict(rows: Dict[str, dict]) -> str:
    """Which peers MSLoRA beats, ties or loses to, by the paired comparison."""
    groups = dict(better=[], worse=[], level=[])
    for method, row in rows.items():
        p = row.get('mslora_minus')
        if method == 'mslora' or not p or p['n'] < 2:
            continue
        key = 'level' if not p['exceeds_spread'] else 'better' if p['mean'] > 0 else 'worse'
        groups[key].append(f"{METHOD_NAMES[method]} ({p['mean']:+.2f})")
    if not any(groups.values()):
        return 'Paired comparison: not enough seeds yet.'
    better, worse, level = (', '.join(groups[k]) or 'none' for k in ('better', 'worse', 'level'))
    return ('Paired comparison (|mean difference| > its std across seeds): MSLoRA above '
            f'{better}; below {worse}; within the seed spread of {level}.')


def plot_convergence(path: str, summary: dict, profile: dict) -> None:
    """Validation score against step (mean over seeds at the chosen lr) per method; the
    last 20% of the steps shaded."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = list(summary['tasks'])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        result = summary['tasks'][task]
        steps = profile['tasks'][task]['steps']
        ax.axvspan(0.8 * steps, steps, color='0.9', label='last 20%')
        for method, row in result['rows'].items():
            if not row.get('val_curve'):
                continue
            xs, ys = zip(*row['val_curve'])
            flat = row['flatness']
            ax.plot(xs, ys, marker='o', ms=3, lw=2.5 if method == 'mslora' else 1.3,
                    label=f"{METHOD_NAMES[method]} lr {row['lr']:g} "
                          f"({100 * flat['rel_change']:+.1f}%)")
        ax.set_title(TASKS[task]['title'])
        ax.set_xlabel('step')
        ax.set_ylabel(f"validation {TASKS[task]['metric']}")
        ax.legend(fontsize=6.5, loc='lower right')
    fig.suptitle('Validation curves at each method\'s chosen lr (mean over seeds; in the '
                 'legend: change over the last 20%)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (the cuda profile)")
    p.add_argument('--quick', action='store_true', help='the smoke profile: a few steps')
    p.add_argument('--tasks', nargs='+', choices=sorted(TASKS))
    p.add_argument('--methods', nargs='+', choices=ALL_METHODS)
    p.add_argument('--ablations', nargs='*', choices=sorted(ABLATIONS))
    p.add_argument('--lrs', nargs='+', type=float)
    p.add_argument('--seeds', nargs='+', type=int)
    p.add_argument('--steps', type=int, help='the steps of every task (default: the profile)')
    p.add_argument('--threads', type=int, help='torch threads per worker')
    p.add_argument('--workers', type=int, help='processes running jobs at once')
    p.add_argument('--amp', choices=('on', 'off'), help='bf16 autocast (default: on for cuda)')
    p.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results'))
    p.add_argument('--name', help='output file stem (default evidence, evidence_gpu, '
                                  'evidence_quick)')
    p.add_argument('--cache-dir', default=osp.join(ROOT, 'work_dirs', 'evidence_cache'))
    p.add_argument('--resume', action='store_true', help='keep the runs the JSON holds')
    p.add_argument('--report-only', action='store_true', help='rewrite md/png from the JSON')
    return p.parse_args(argv)


def make_profile(args) -> Tuple[str, dict]:
    name = 'quick' if args.quick else 'cuda' if args.device.startswith('cuda') else 'cpu'
    profile = copy.deepcopy(PROFILES[name])
    tasks = args.tasks or profile.pop('default_tasks', tuple(profile['tasks']))
    profile.pop('default_tasks', None)
    profile['tasks'] = {t: profile['tasks'][t] for t in tasks}
    for key in ('methods', 'lrs', 'seeds'):
        if getattr(args, key):
            profile[key] = tuple(getattr(args, key))
    if args.ablations is not None:
        profile['ablations'] = tuple(args.ablations)
    if args.steps:
        for settings in profile['tasks'].values():
            settings['steps'] = args.steps
    if args.threads:
        profile['threads'] = args.threads
    if args.workers:
        profile['workers'] = args.workers
    if args.amp:
        profile['amp'] = args.amp == 'on'
    if 'mslora' not in profile['methods']:
        raise SystemExit('--methods must include mslora: every comparison is against it')
    profile['ablation_tasks'] = tuple(t for t in profile['ablation_tasks']
                                      if t in profile['tasks'])
    return name, profile


def _git_commit() -> Optional[str]:
    """HEAD of the repository, with '+dirty' when mmslora/ has uncommitted changes."""
    import subprocess
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'mmslora'], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ('+dirty' if dirty else '')


def main(argv=None) -> dict:
    args = parse_args(argv)
    name, profile = make_profile(args)
    stem = args.name or dict(cpu='evidence', cuda='evidence_gpu', quick='evidence_quick')[name]
    os.makedirs(args.out, exist_ok=True)
    paths = {k: osp.join(args.out, stem + ext) for k, ext in
             (('json', '.json'), ('md', '.md'), ('plot', '_convergence.png'))}
    command = '.venv/bin/python benchmarks/evidence.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    records, commands, prior_min = [], [], 0.0
    if (args.resume or args.report_only) and osp.exists(paths['json']):
        with open(paths['json']) as f:
            prior = json.load(f)
        if prior['meta']['profile'] != json.loads(json.dumps(profile)) and not args.report_only:
            raise SystemExit(f"--resume: {paths['json']} was run with other settings; give "
                             f"the same arguments, or another --out / --name")
        # runs skipped for a missing adapter argument are tried again
        records = [r for r in prior['records'] if 'error' not in r or args.report_only]
        commands = prior['meta']['commands']
        prior_min = prior['meta']['wall_min']
        if args.report_only:
            profile = prior['meta']['profile']
    elif args.report_only:
        raise SystemExit(f"--report-only: no {paths['json']}")
    commands = commands + ([] if args.report_only else [command.strip()])
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: torch sees no GPU here')
    torch.set_num_threads(profile['threads'])
    _quiet()
    _WORKER.update(profile=profile, device=device, threads=profile['threads'],
                   cache_dir=args.cache_dir, data={})
    start = time.time()
    done = {r['key'] for r in records}
    commit = _git_commit()

    def save(record=None):
        if record is not None:
            records.append(record)
        final = record is None
        summary = summarize(records, profile)
        meta = dict(date=datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
                    command=' && '.join(commands), commands=commands, profile=profile,
                    profile_name=name, device=str(device), torch=torch.__version__,
                    threads=profile['threads'], workers=profile['workers'],
                    machine=f'{platform.machine()}, {os.cpu_count()} CPUs',
                    wall_min=prior_min + (time.time() - start) / 60, runs_done=len(records),
                    mmslora_commit=commit if not args.report_only else
                    prior['meta'].get('mmslora_commit'),
                    memory=('torch.cuda.max_memory_allocated' if device.type == 'cuda' else
                            'live bytes + torch.profiler rise, second step'),
                    json=paths['json'], plot=paths['plot'])
        with open(paths['json'] + '.part', 'w') as f:
            json.dump(dict(meta=meta, summary=summary, records=records), f, indent=1)
        os.replace(paths['json'] + '.part', paths['json'])
        write_markdown(paths['md'], summary, meta)
        if final or len(records) % 10 == 0:  # a plot costs about a second
            plot_convergence(paths['plot'], summary, profile)
        return summary

    if not args.report_only:
        for task in profile['tasks']:  # data prepared (and errors raised) before any run
            task_data(task, profile['tasks'][task], args.cache_dir)
        if profile['amp']:
            check_amp(device, profile['methods'])
        pool = make_pool(profile['workers'])
        try:
            run_jobs([j for j in selection_jobs(profile) if job_key(j) not in done], pool, save)
            run_jobs([j for j in second_phase_jobs(profile, records) if job_key(j) not in done],
                     pool, save)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    summary = save()
    print(open(paths['md']).read())
    return summary


if __name__ == '__main__':
    main()
