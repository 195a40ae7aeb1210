"""Merge a trained LoRA into the backbone and write a plain upstream checkpoint.

    mmslora-merge CONFIG CHECKPOINT OUT.pth [--cfg-options k=v ...]

(also ``python tools/merge.py ...``; CONFIG is a file or a ``mmslora::`` name).

Builds CONFIG, loads CHECKPOINT (mmslora's safe loader), merges the active adapter set
of every :class:`~mmslora.models.MSLoRABackbone` into the backbone's weights
(:mod:`mmslora.models.merging`) and writes

* ``OUT.pth``: ``{'meta': ..., 'state_dict': ...}`` with the upstream model's keys
  (``backbone.backbone.*`` -> ``backbone.*``, adapters dropped), weights only (loads
  with ``torch.load(weights_only=True)``); the meta keeps the checkpoint's plain
  entries (``dataset_meta``, ...) and adds ``mmslora_merge``;
* ``OUT.py``: the config with every wrapper replaced by the backbone it wraps.

mmdet's ``init_detector('OUT.py', 'OUT.pth')`` (mmseg's ``init_model``, mmpretrain's
``get_model``) then runs the fine-tuned model without mmslora installed. Block adapters
(MSLoRA, Mona, Adapter) cannot be merged: the command stops with an error naming the
set; export those with ``mmslora-export-adapter``.
"""

import argparse
import logging
import os
import os.path as osp
from collections import OrderedDict
from typing import Any, List, Optional

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.runner import load_checkpoint

import mmslora
from mmslora.models import find_wrappers
from mmslora.models.merging import upstream_config, upstream_state_dict
from mmslora.utils.config import build_model_from_config, disable_pretrained, load_config

#: what :func:`plain_value` gives for a value it drops
_DROP = object()


def plain_value(value: Any) -> Any:
    """``value`` with only the types a weights-only ``torch.load`` reads without an
    allowlist (numbers, strings, lists, tuples, dicts, None); NumPy scalars become
    numbers; anything else (or a container holding it) becomes ``_DROP``."""
    if value is None:
        return value
    for kind in (bool, str, int, float):  # subclasses too (np.float64, TorchVersion)
        if isinstance(value, kind):
            return kind(value)
    if (
        type(value).__module__ == 'numpy'
        and hasattr(value, 'item')
        and not getattr(value, 'shape', ())
    ):
        return value.item()
    if isinstance(value, (list, tuple)):
        items = [plain_value(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else type(value)(items)
    if isinstance(value, dict):
        items = {k: plain_value(v) for k, v in value.items()}
        bad = not all(isinstance(k, (str, int)) for k in items)
        return _DROP if bad or any(v is _DROP for v in items.values()) else items
    return _DROP


def plain_meta(meta: dict) -> dict:
    """The entries of a checkpoint's ``meta`` that :func:`plain_value` keeps."""
    kept = {key: plain_value(value) for key, value in (meta or {}).items()}
    return {key: value for key, value in kept.items() if value is not _DROP}


def merge_wrappers(model: torch.nn.Module) -> List[str]:
    """Merge the active set of every wrapper in ``model`` that has adapters (no copy of
    the originals is kept); ``'<wrapper path>: <set>'`` for each. ``ValueError`` from a
    set that cannot merge."""
    merged = []
    for path, wrapper in find_wrappers(model).items():
        if len(wrapper.adapter_set().modules):
            wrapper.merge_adapters(keep_original=False)
            merged.append(f'{path or "model"}: {wrapper.active_adapter}')
    return merged


def merge_checkpoint(
    config: str, checkpoint: str, out: str, cfg_options: Optional[dict] = None
) -> dict:
    """Write the plain upstream checkpoint ``out`` and its config (``out`` with
    ``.py``) from CONFIG and the trained CHECKPOINT; return ``dict(checkpoint, config,
    merged, leftovers)`` (``leftovers``: config keys that still name mmslora)."""
    if not out.endswith('.pth'):
        raise ValueError(
            f'mmslora-merge: OUT must end in .pth (the config is written '
            f'next to it with .py), got {out!r}.'
        )
    cfg = load_config(config, cfg_options)
    model = build_model_from_config(disable_pretrained(load_config(config, cfg_options)))
    loaded = load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    model.eval()
    merged = merge_wrappers(model)
    state = upstream_state_dict(model)
    meta = plain_meta(loaded.get('meta', {}) if isinstance(loaded, dict) else {})
    meta['mmslora_merge'] = dict(
        mmslora=str(mmslora.__version__),
        torch=str(torch.__version__),
        source=osp.basename(checkpoint),
        merged=merged,
        config=osp.basename(config),
    )
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    weights = OrderedDict((key, value.cpu()) for key, value in state.items())
    weights._metadata = state._metadata  # the modules' versions, as state_dict() has
    torch.save(dict(meta=meta, state_dict=weights), out)
    plain_cfg, leftovers = upstream_config(cfg)
    cfg_out = out[: -len('.pth')] + '.py'
    plain_cfg.dump(cfg_out)
    if leftovers:
        print_log(
            f'mmslora-merge: {cfg_out} still names mmslora at {leftovers}; building '
            f'that config needs mmslora.',
            logger='current',
            level=logging.WARNING,
        )
    return dict(checkpoint=out, config=cfg_out, merged=merged, leftovers=leftovers)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument(
        'out', help='the plain checkpoint to write (.pth); its config goes next to it (.py)'
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    result = merge_checkpoint(args.config, args.checkpoint, args.out, args.cfg_options)
    print(
        f'mmslora {mmslora.__version__}: merged {result["merged"] or "nothing (no adapters)"}'
        f'; wrote {result["checkpoint"]} and {result["config"]} for the upstream toolbox '
        f'alone'
    )


if __name__ == '__main__':
    main()
