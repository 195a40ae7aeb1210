"""``mmslora.CheckpointFitHook``: a checkpoint that does not fit the model is refused
before anything is loaded."""

import re

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmslora.compat.mmengine import runner_is_resuming, runner_load_from
from mmslora.models import find_wrappers
from mmslora.registry import HOOKS
from mmslora.utils.state_dict import (
    CheckpointMismatchError,
    mismatch_summary,
    state_dict_mismatches,
)


@HOOKS.register_module()
class CheckpointFitHook(Hook):
    """Refuse a checkpoint that does not fit the model, before anything is loaded.

    MMEngine loads ``load_from`` / ``--resume`` checkpoints with ``strict=False``: a
    tensor whose shape differs is skipped with a warning and the others are copied,
    so a checkpoint trained with another adapter config (``hidden_dim``, ``groups``,
    another block selection or backbone) leaves a half-loaded model behind. Resumed,
    the run then fails at the first optimizer step with a bare tensor-size error;
    loaded with ``load_from`` it trains on silently; tested, it is evaluated as is.

    This hook runs in ``after_load_checkpoint``, which MMEngine calls before it copies
    anything, and raises :class:`~mmslora.utils.state_dict.CheckpointMismatchError`
    listing the missing and unexpected keys and the shape mismatches:

    * ``strict=True`` (``tools/test.py``): any mismatch in the whole model;
    * resuming: any shape mismatch, and missing or unexpected keys under an
      ``MSLoRABackbone`` (keys elsewhere keep MMEngine's warning);
    * ``load_from`` (a new run that starts from a checkpoint): keys under an
      ``MSLoRABackbone``, when the checkpoint has adapters for it (an upstream
      checkpoint without adapters only gets a warning when its backbone keys would
      be dropped). Heads of another shape keep MMEngine's warning: loading a COCO
      detector's checkpoint into a one-class head is normal fine-tuning.

    ``tools/train.py`` and ``tools/test.py`` add this hook. Models without an
    ``MSLoRABackbone`` are not checked, nor runs of MMEngine's ``FlexibleRunner``
    (FSDP/DeepSpeed strategies may hand the hook sharded state dicts).
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the checkpoint into its EMA model

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not isinstance(runner, Runner):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        wrappers = find_wrappers(model)
        if not wrappers or not isinstance(checkpoint, dict):
            return
        state = checkpoint.get('state_dict', checkpoint)
        state = {
            re.sub(r'^module\.', '', k): v for k, v in state.items() if isinstance(v, torch.Tensor)
        }
        expected = model.state_dict()
        missing, unexpected, shapes = state_dict_mismatches(expected, state)
        prefixes = tuple(f'{name}.' if name else '' for name in wrappers)

        def inside(key):
            return key.startswith(prefixes)

        resume = runner_is_resuming(runner)
        if self.strict:
            pass
        elif resume:
            missing = [k for k in missing if inside(k)]
            unexpected = [k for k in unexpected if inside(k)]
        else:
            with_adapters = tuple(
                p for p in prefixes if any(k.startswith(p + 'adapters.') for k in state)
            )
            self._warn_unwrapped(runner, state, expected, prefixes, with_adapters)
            missing = [k for k in missing if k.startswith(with_adapters)] if with_adapters else []
            unexpected = (
                [k for k in unexpected if k.startswith(with_adapters)] if with_adapters else []
            )
            shapes = [s for s in shapes if s.startswith(with_adapters)] if with_adapters else []
        if not (missing or unexpected or shapes):
            return
        what = 'resume from' if resume else 'load'
        hint = ''
        meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
        if meta.get('format') == 'mmslora-adapter-v1':
            hint = (
                ' This is an adapter-only file (tools/export_adapter.py): load it with '
                'mmslora.models.load_adapter onto the model with its pretrained '
                'backbone, or give the full training checkpoint.'
            )
        raise CheckpointMismatchError(
            f'Cannot {what} checkpoint {self._filename(runner)!r}: it does not fit the '
            f'model (nothing was loaded): {mismatch_summary(missing, unexpected, shapes)}. '
            'It was saved from a model built with another config (another backbone, '
            'block selection or adapter config such as hidden_dim or groups): build the '
            'model from the config it was trained with (a Runner checkpoint keeps it in '
            "meta['cfg']), or train from scratch without resume/load_from."
            + hint
            + _wrapper_config_diff(
                meta.get('cfg') or meta.get('config'), getattr(runner, 'cfg', None)
            ),
            missing,
            unexpected,
            shapes,
        )

    @staticmethod
    def _warn_unwrapped(runner, state, expected, prefixes, with_adapters) -> None:
        # an upstream checkpoint's `backbone.conv1.weight` is `backbone.backbone.conv1...`
        # here: mmengine drops it with a generic "unexpected key" warning
        dropped = [
            k
            for k in state
            if k not in expected
            and k.startswith(prefixes)
            and not k.startswith(with_adapters or ('\0',))
        ]
        fits = [
            k
            for k in dropped
            for p in prefixes
            if k.startswith(p) and f'{p}backbone.{k[len(p) :]}' in expected
        ]
        if fits:
            runner.logger.warning(
                f'CheckpointFitHook: {len(fits)} keys of the checkpoint, e.g. {fits[:3]}, '
                'belong to an unwrapped backbone and are not loaded: inside '
                "MSLoRABackbone the backbone's keys are '<wrapper>.backbone.*'. Load a "
                "backbone checkpoint through the wrapped backbone's init_cfg "
                "(dict(type='Pretrained', checkpoint=..., prefix='backbone.')) instead."
            )

    @staticmethod
    def _filename(runner) -> str:
        load_from = runner_load_from(runner)
        if load_from:
            return str(load_from)
        try:
            from mmengine.runner import find_latest_checkpoint

            return str(find_latest_checkpoint(runner.work_dir))
        except Exception:  # pragma: no cover
            return '<checkpoint>'


def _flatten(value, prefix=''):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key != 'init_cfg':
                out.update(_flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return out
    return {prefix: value}


def _wrapper_cfgs(cfg) -> list:
    """The ``MSLoRABackbone`` configs inside a model config, in order."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get('type', '')).endswith('MSLoRABackbone'):
                found.append(node)
                return
            for item in node.values():
                walk(item)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    walk(cfg)
    return found


def _wrapper_config_diff(saved_config, cfg) -> str:
    """`` The checkpoint's config differs: ...`` for the wrapper settings that differ
    between the config text a Runner checkpoint keeps and the current config."""
    if not saved_config or cfg is None:
        return ''
    try:
        from mmengine.config import Config

        saved = Config.fromstring(saved_config, file_format='.py').to_dict()
        now = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
        diffs = []
        for old, new in zip(_wrapper_cfgs(saved.get('model')), _wrapper_cfgs(now.get('model'))):
            old, new = _flatten(old), _flatten(new)
            diffs += [
                f'{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}'
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
    except Exception:  # the saved config may not parse here; the key list suffices
        return ''
    return f' The MSLoRABackbone settings differ: {diffs[:6]}.' if diffs else ''
