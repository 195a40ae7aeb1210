"""The training health of the demo configs: the Mask R-CNN of ``make demo``, on one batch and
on its schedule: what benchmarks/results/demo_health.md measured, kept checked.

* the adapters get a step budget that lets them move (they ended at 0.5-1.3% of the
  features when they trained at the FPN's lr);
* the log lines average the iterations since the previous line;
* the data reaching the heads is sane: binary masks, the zero start, the BCE and CE
  losses of an untrained head;
* the first ``loss_mask`` of mmdet's mask head is 10-50 instead of ~0.7 (known,
  xfail: mmdet's ``FCNMaskHead.init_weights`` draws ``conv_logits`` with std sqrt(2)
  when ``num_classes=1``; the fix needs a package-side head, see demo_health.md).
"""

import copy
import math
import os.path as osp

import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET = osp.join(ROOT, 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py')
CLS = osp.join(ROOT, 'configs/demo/effnet-lite0-mslora_fashion-mnist.py')


def _demo_cfg(nuclei_root=None):
    from mmengine.registry import init_default_scope

    from mmslora.utils.config import load_config

    cfg = load_config(DET)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    if nuclei_root is not None:
        cfg.train_dataloader.dataset.data_root = nuclei_root
        cfg.train_dataloader.num_workers = 0
        cfg.train_dataloader.persistent_workers = False
    return cfg


def test_demo_adapters_get_ten_times_the_step_budget():
    """Adam moves a parameter by about lr per step, so the sum of lr over the schedule
    bounds how far an adapter can go from its zero start: ~0.1 at the FPN's lr (too
    little to leave the start visibly), ~1 for the adapters with lr_mult=10."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    from mmslora.utils.config import build_model_from_config

    cfg = _demo_cfg()
    model = build_model_from_config(cfg, init_weights=False)
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = wrapper.optimizer.param_groups
    is_adapter = [
        all(names[id(p)].startswith('backbone.adapters.') for p in g['params']) for g in groups
    ]
    assert sum(len(g['params']) for g in groups) == sum(p.requires_grad for p in model.parameters())
    schedulers = [
        PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper))
        for s in copy.deepcopy(cfg.param_scheduler)
    ]
    budget = np.zeros(len(groups))
    for _ in range(cfg.train_cfg.max_iters):
        budget += [g['lr'] for g in groups]
        for scheduler in schedulers:
            scheduler.step()
    adapters, others = budget[np.array(is_adapter)], budget[~np.array(is_adapter)]
    assert adapters.size and others.size
    assert others.max() == pytest.approx(0.0978, rel=0.01)  # the FPN and heads
    assert adapters.min() >= 0.9 and adapters.min() == pytest.approx(10 * others.max())


def test_demo_log_lines_average_since_the_previous_line():
    """mmdet's runtime smooths the logged losses over 50 iterations; with a line every 10
    the first lines showed the mean since iteration 1 (the first iterations' loss_mask
    of ~25 stayed in the log until iteration 50, when the loss itself was under 1)."""
    cfg = _demo_cfg()
    assert cfg.log_processor.window_size == cfg.default_hooks.logger.interval


@pytest.fixture(scope='module')
def first_batch(nuclei_root):
    """The demo model (real pretrained backbone, seed 0) and its losses on one batch,
    with the mask targets, the mask logits and the adapters' residuals recorded."""
    from mmengine.runner import Runner

    from mmslora.models.base import find_wrappers
    from mmslora.utils.config import build_model_from_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _demo_cfg(nuclei_root)
        torch.manual_seed(0)
        model = build_model_from_config(cfg, init_weights=True)
        batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
        record = dict(residual=[])
        head = model.roi_head.mask_head
        get_targets = head.get_targets

        def targets(*args, **kwargs):
            record['targets'] = get_targets(*args, **kwargs)
            return record['targets']

        head.get_targets = targets
        head.conv_logits.register_forward_hook(
            lambda m, args, out: record.update(logits=out.detach())
        )
        for wrapper in find_wrappers(model).values():
            for adapter in wrapper.adapter_set().modules.values():
                adapter.register_forward_hook(
                    lambda m, args, out: record['residual'].append(
                        float((out - args[0]).abs().max())
                    )
                )
        model.train()
        data = model.data_preprocessor(batch, True)
        with torch.no_grad():
            losses = model.loss(data['inputs'], data['data_samples'])
        losses = {k: float(sum(v) if isinstance(v, list) else v) for k, v in losses.items()}
        return batch, model, record, losses
    finally:
        torch.set_num_threads(threads)


def test_demo_first_batch_masks_and_targets_are_binary(first_batch):
    batch, model, record, _ = first_batch
    assert model.data_preprocessor.mean.flatten().tolist() == [127.0] * 3
    assert model.data_preprocessor.std.flatten().tolist() == [128.0] * 3
    for sample in batch['data_samples']:
        masks = sample.gt_instances.masks.to_ndarray()
        assert len(masks) > 10 and set(np.unique(masks)) == {0, 1}
        boxes = sample.gt_instances.bboxes.tensor
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
            ys, xs = np.nonzero(mask)
            assert (
                xs.min() >= x0 - 1
                and xs.max() < x1 + 1
                and ys.min() >= y0 - 1
                and ys.max() < y1 + 1
            )
    targets = record['targets']
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    assert len(targets) >= 20 and 0.3 < float(targets.mean()) < 0.9  # nuclei fill their RoIs


def test_demo_first_batch_starts_at_the_pretrained_model(first_batch):
    _, _, record, losses = first_batch
    assert len(record['residual']) == 16 and max(record['residual']) == 0.0
    # untrained heads: a 2-way softmax and a sigmoid near ln 2
    assert abs(losses['loss_rpn_cls'] - math.log(2)) < 0.15
    assert losses['loss_cls'] < 2.5


@pytest.mark.xfail(
    strict=True,
    reason=(
        "mmdet's FCNMaskHead.init_weights draws conv_logits with kaiming fan_out: std "
        "sqrt(2 / num_classes) = 1.41 for one class, so the first mask logits are 30-70 "
        "in magnitude; a package-side mask head with a small predictor init fixes it "
        "(benchmarks/results/demo_health.md); remove this mark when the config uses it"
    ),
)
def test_demo_first_loss_mask_is_a_bce_start(first_batch):
    _, _, record, losses = first_batch
    assert float(record['logits'].abs().mean()) < 5
    assert losses['loss_mask'] < 2


def test_demo_classifier_loss_falls_on_one_batch(fashion_root, one_thread):
    """The Fashion-MNIST demo config learns: six optimizer steps of its own optimizer
    (AdamW, lr 1e-3, trainable parameters only) on one batch of 8 real images lower that
    batch's loss by more than half, with the backbone's pretrained weights loaded."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    from mmslora.registry import MODELS
    from mmslora.utils.config import load_config

    cfg = load_config(CLS)
    init_default_scope('mmpretrain')
    cfg.train_dataloader.update(batch_size=8, num_workers=0)
    cfg.train_dataloader.dataset.update(data_root=fashion_root, indices=8)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    losses = [model.train_step(batch, optim)['loss'].item() for _ in range(7)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
