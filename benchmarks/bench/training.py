"""Training one run of the protocol: the model (the real ImageNet EfficientNet-Lite0 in
``MSLoRABackbone`` with a task head), the optimizer with two learning rates, the
schedule, the loop with its validation curve and memory probe, and the scores.

Every run: AdamW (weight decay 0.05) with two parameter groups, the method's own
parameters (everything trainable inside the backbone wrapper) at the run's ``lr`` and
everything else (head, neck) at the task's ``head_lr``; a linear warm-up over the first
10% of the steps, then a cosine decay to 0; the validation score at the fractions
``eval_at`` of the steps.
"""

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmslora.models import count_parameters
from mmslora.registry import MODELS
from .data import Batches, normalise
from .memory import persistent_bytes, step_peak_bytes
from .methods import DEMO_WIDTHS, switch

EVAL_AT = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0)  # fractions of the steps with a validation


def backbone_cfg(kind: str) -> dict:
    """The real ImageNet EfficientNet-Lite0 in ``MSLoRABackbone``: the 1280-channel head
    conv for classification, strides 4, 8, 16, 32 (24, 40, 112, 320 channels) else."""
    return dict(
        type='mmslora.MSLoRABackbone',
        backbone=dict(
            type='mmslora.EfficientNetLite',
            arch='lite0',
            out_indices=(7,) if kind == 'cls' else (1, 2, 4, 6),
            init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0://imagenet'),
        ),
    )


class Model(nn.Module):
    """The wrapped backbone and a head: pooled features -> Linear for classification;
    mmseg's SegformerHead on the four scales for segmentation (logits at stride 4)."""

    def __init__(self, kind: str, row: str, classes: int, seed: int):
        super().__init__()
        self.kind = kind
        torch.manual_seed(seed)  # the same head for every method of a seed
        if kind == 'cls':
            self.head = nn.Linear(1280, classes)
        else:
            import mmseg.models  # noqa: F401  (registers the heads)
            from mmseg.registry import MODELS as SEG_MODELS

            self.head = SEG_MODELS.build(
                dict(
                    type='SegformerHead',
                    in_channels=[24, 40, 112, 320],
                    in_index=[0, 1, 2, 3],
                    channels=64,
                    num_classes=classes,
                    norm_cfg=dict(type='BN'),
                    align_corners=False,
                )
            )
            self.head.init_weights()
        torch.manual_seed(seed + 1000)
        self.backbone = MODELS.build(switch(backbone_cfg(kind), row, DEMO_WIDTHS))
        self.backbone.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(normalise(x))
        if self.kind == 'cls':
            return self.head(features[0].mean((2, 3)))
        return self.head(list(features))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        if self.kind == 'seg':
            logits = F.interpolate(logits, size=y.shape[-2:], mode='bilinear', align_corners=False)
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def score(self, split: Tuple[torch.Tensor, torch.Tensor], batch: int) -> float:
        """Top-1 accuracy (%) or mIoU (%, mean over the classes present in the region)."""
        x, y = split
        if self.kind == 'cls':
            correct = sum(
                int((self(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
                for i in range(0, len(x), batch)
            )
            return 100.0 * correct / len(x)
        pred = F.interpolate(
            self(x[None]).float(), size=y.shape, mode='bilinear', align_corners=False
        ).argmax(1)[0]
        ious = []
        for c in range(int(max(pred.max(), y.max())) + 1):  # absent from both: left out
            union = int(((pred == c) | (y == c)).sum())
            if union:
                ious.append(int(((pred == c) & (y == c)).sum()) / union)
        return 100.0 * sum(ious) / len(ious)


def param_groups(model: nn.Module, lr: Optional[float], head_lr: float) -> List[dict]:
    """The method's own parameters (trainable inside ``model.backbone``) at ``lr``,
    everything else trainable at ``head_lr``. A method with no own parameter (linear
    probe) has no ``lr``; one with parameters needs it."""
    own = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in own}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if own and lr is None:
        raise ValueError('the method trains backbone parameters: give it an lr')
    if not own and lr is not None:
        raise ValueError('the method trains nothing in the backbone: its lr must be None')
    return ([dict(params=own, lr=lr)] if own else []) + [dict(params=rest, lr=head_lr)]


def warmup_cosine(steps: int) -> Callable[[int], float]:
    """The lr factor of step s: linear warm-up over 10% of ``steps``, cosine to 0."""
    warm = max(1, steps // 10)
    return lambda s: (
        (s + 1) / warm
        if s < warm
        else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )


def fit(
    model: nn.Module,
    groups: List[dict],
    loss_fn: Callable[[], torch.Tensor],
    val_fn: Callable[[], float],
    steps: int,
    eval_at: Sequence[float],
    device: torch.device,
    amp: bool = False,
    clip: Optional[float] = None,
) -> dict:
    """Train ``steps`` steps of ``loss_fn()``; the validation curve ``[[step, val_fn()],
    ...]`` at ``eval_at`` and ``loss_curve``, the mean training loss since the previous
    point; stops at a non-finite loss (``diverged``). ``train_s`` and ``train_cpu_s``:
    the steps' wall time and this process's CPU time, without evaluations (the profiled
    step 2 counts as step 1 did). ``peak_mib``: on CPU the live bytes at the start of
    step 2 plus :func:`step_peak_bytes` of it; on CUDA the allocator's peak."""
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    params = [p for g in groups for p in g['params']]
    evals = sorted({max(1, round(f * steps)) for f in eval_at})
    curve, losses, since, train_s, train_cpu, peak, diverged = [], [], [], 0.0, 0.0, None, False
    cuda = device.type == 'cuda'

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return float(loss.detach())

    model.train()
    for i in range(1, steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        if i == 2 and not cuda:  # the memory probe (its own time counts as step 1's)
            box = []
            peak = persistent_bytes(model, opt) + step_peak_bytes(
                lambda box=box: box.append(step())
            )
            loss, dt, dc = box[0], train_s, train_cpu
        else:
            loss = step()
            if cuda:
                torch.cuda.synchronize(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        train_s += dt
        train_cpu += dc
        diverged = not math.isfinite(loss)
        since.append(loss)
        if i in evals or diverged:
            losses.append([i, sum(since) / len(since)])
            since = []
            model.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                curve.append([i, val_fn()])
            model.train()
        if diverged:
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    return dict(
        val_curve=curve,
        val=curve[-1][1],
        loss_curve=losses,
        diverged=diverged,
        train_s=round(train_s, 2),
        train_cpu_s=round(train_cpu, 2),
        peak_mib=round(peak / 2**20, 1) if peak is not None else None,
    )


def params_record(model: nn.Module) -> Dict[str, int]:
    report = count_parameters(model)
    return dict(
        total=report.total,
        trainable=report.trainable,
        backbone=report.backbone,
        adapter=report.adapter,
        backbone_trainable=report.backbone_trainable,
    )


def run_classic(
    job: dict, data: dict, settings: dict, device: torch.device, amp: bool = False
) -> dict:
    """One classification or segmentation run: ``job`` (task, row, lr, seed), ``data``
    (``fit`` / ``val`` / ``test`` on ``device``), ``settings`` (kind, classes, steps,
    batch, head_lr, crop, hflip, eval_batch, eval_at)."""
    kind = settings['kind']
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    model = Model(kind, job['row'], settings['classes'], job['seed']).to(device)
    batches = Batches(
        kind,
        data['fit'],
        settings['batch'],
        job['seed'],
        crop=settings.get('crop'),
        hflip=settings.get('hflip', False),
    )
    eval_batch = settings.get('eval_batch', 200)

    def loss_fn():
        return model.loss(*batches.next())

    result = fit(
        model,
        param_groups(model, job['lr'], settings['head_lr']),
        loss_fn,
        lambda: model.score(data['val'], eval_batch),
        settings['steps'],
        settings.get('eval_at', EVAL_AT),
        device,
        amp,
    )
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        result['test'] = model.score(data['test'], eval_batch)
    return dict(result, params=params_record(model))


def check_amp(device: torch.device, rows: Sequence[str]) -> None:
    """One training step of each row under bf16 autocast on a tiny input, so that a
    method whose backward does not take bf16 stops the grid before it starts, by name."""
    failed = {}
    for row in rows:
        model = Model('cls', row, 10, 0).to(device).train()
        x = torch.zeros(2, 1, 32, 32, dtype=torch.uint8, device=device)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.loss(x, torch.zeros(2, dtype=torch.long, device=device))
            loss.backward()
        except RuntimeError as err:
            failed[row] = str(err).splitlines()[0]
    if failed:
        raise SystemExit(
            f'bf16 autocast fails in the training step of {failed}; run with '
            f'--amp off (fp32), or fix the method for autocast.'
        )
