"""Hooks of mmslora."""
import random
import re
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from mmslora.registry import HOOKS
from mmslora.utils.params import count_parameters


@HOOKS.register_module()
class ParameterReportHook(Hook):
    """Log the parameter report (total, trainable, adapter, frozen, trainable share of
    the backbone) once, when training starts."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        runner.logger.info('MSLoRA parameter report\n' + count_parameters(model).table())


# --------------------------------------------------------------------------
# Exact resume: the global random state
# --------------------------------------------------------------------------
def _get_random_state() -> dict:
    """The global random generators' state, in types a weights-only load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = dict(python=[version, list(internal), gauss],
                 numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_random_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


class _RestoreBeforeFetch:
    """Wraps ``IterBasedTrainLoop.dataloader_iterator``: after ``skip`` batches (the
    loop's replay of the batches trained before the checkpoint), calls ``restore``
    right before the next batch is fetched, then passes batches through."""

    def __init__(self, iterator, skip: int, restore) -> None:
        self.iterator = iterator
        self._skip = skip
        self._restore = restore

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip <= 0 and self._restore is not None:
            restore, self._restore = self._restore, None
            restore()
        self._skip -= 1
        return next(self.iterator)

    def __getattr__(self, name):
        if name == 'iterator':  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.iterator, name)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Make ``--resume`` continue a run exactly as if it had not stopped.

    MMEngine restores weights, optimizer, schedulers, counters and the data order
    (``IterBasedTrainLoop`` replays the trained batches through the sampler, whose
    shuffling is seeded by ``seed + epoch``), but not the global random generators
    (``random``, ``numpy``, ``torch``, CUDA). A resumed run re-seeds them from scratch,
    so anything drawing from them after the checkpoint differs from the uninterrupted
    run: stochastic depth / dropout in the forward, random augmentations run in the
    main process (``num_workers=0``), ... The weights then drift apart.

    This hook

    * writes the generators' state into every checkpoint (``checkpoint['rng_state']``);
    * on resume, puts it back right before the first batch after the checkpoint is
      fetched (after the loop's replay of the trained batches, which draws random
      numbers of its own); with an ``EpochBasedTrainLoop`` at the start of the epoch;
    * keeps validation out of the training stream: the state is saved before each
      validation and put back after it, since validation draws random numbers too
      (creating a ``DataLoader`` iterator draws a seed from ``torch``) and runs
      after the checkpoint of the same iteration is written.

    Data-loader workers are seeded by MMEngine's ``worker_init_fn`` from the config
    seed, so their augmentations replay identically anyway. In distributed runs only
    rank 0 writes checkpoints, so its state is restored on every rank; that is exact
    with ``randomness.diff_rank_seed=False`` (the default: every rank draws the same
    stream) and skipped, with a warning, when ranks have their own seeds.

    ``tools/train.py`` adds this hook to every config. A plain ``--load-from`` (no
    resume) leaves the random state alone.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None
        self._before_val: Optional[dict] = None

    # -------------------------------------------------------------- saving
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # a checkpoint written during validation (save_best) gets the training stream
        state = self._before_val if self._before_val is not None else _get_random_state()
        checkpoint['rng_state'] = dict(
            state, world_size=runner.world_size,
            diff_rank_seed=bool(getattr(runner, '_randomness_cfg', {}).get('diff_rank_seed')))

    def before_val(self, runner) -> None:
        self._before_val = _get_random_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            _set_random_state(self._before_val)
            self._before_val = None

    # ------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = None
        if not getattr(runner, '_resume', False):
            return  # load_from without resume: a new run
        state = checkpoint.get('rng_state')
        if state is None:
            runner.logger.warning(
                'RandomStateHook: the checkpoint holds no random state (written without '
                'this hook); the resumed run draws other random numbers than the '
                'uninterrupted one would have.')
        elif state.get('world_size', 1) > 1 and state.get('diff_rank_seed'):
            runner.logger.warning(
                'RandomStateHook: the checkpoint is from a distributed run with '
                'diff_rank_seed=True; only rank 0\'s random state was saved, so it is '
                'not restored.')
        else:
            self._pending = state

    def before_train(self, runner) -> None:
        if self._pending is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreBeforeFetch(
                loop.dataloader_iterator, loop.iter, self._restore_pending)
        elif not isinstance(loop, EpochBasedTrainLoop):
            runner.logger.warning(
                f'RandomStateHook: cannot restore the random state for a '
                f'{type(loop).__name__}; it is restored when training starts.')
            self._restore_pending()

    def before_train_epoch(self, runner) -> None:
        if self._pending is not None and isinstance(runner.train_loop, EpochBasedTrainLoop):
            per_epoch = len(runner.train_dataloader)
            if runner.iter != runner.epoch * per_epoch:
                runner.logger.warning(
                    'RandomStateHook: resumed from a checkpoint written inside an epoch; '
                    'EpochBasedTrainLoop restarts that epoch, so the random state is not '
                    'restored.')
                self._pending = None
            else:
                self._restore_pending()

    def after_train(self, runner) -> None:
        loop = runner.train_loop
        if isinstance(getattr(loop, 'dataloader_iterator', None), _RestoreBeforeFetch):
            loop.dataloader_iterator = loop.dataloader_iterator.iterator

    def _restore_pending(self) -> None:
        if self._pending is not None:
            _set_random_state(self._pending)
            self._pending = None


# --------------------------------------------------------------------------
# Checkpoints that do not fit: refuse before anything is loaded
# --------------------------------------------------------------------------
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
    anything, and raises :class:`~mmslora.utils.adapter_io.CheckpointMismatchError`
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
        from mmengine.model import is_model_wrapper

        from mmengine.runner import Runner

        from mmslora.utils.adapter_io import (CheckpointMismatchError, _wrappers,
                                              mismatch_summary, state_dict_mismatches)
        if not isinstance(runner, Runner):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        wrappers = _wrappers(model)
        if not wrappers or not isinstance(checkpoint, dict):
            return
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()
                 if isinstance(v, torch.Tensor)}
        expected = model.state_dict()
        missing, unexpected, shapes = state_dict_mismatches(expected, state)
        prefixes = tuple(f'{name}.' if name else '' for name in wrappers)

        def inside(key):
            return key.startswith(prefixes)

        resume = bool(getattr(runner, '_resume', False))
        if self.strict:
            pass
        elif resume:
            missing = [k for k in missing if inside(k)]
            unexpected = [k for k in unexpected if inside(k)]
        else:
            with_adapters = tuple(p for p in prefixes
                                  if any(k.startswith(p + 'adapters.') for k in state))
            self._warn_unwrapped(runner, state, expected, prefixes, with_adapters)
            missing = [k for k in missing if k.startswith(with_adapters)] \
                if with_adapters else []
            unexpected = [k for k in unexpected if k.startswith(with_adapters)] \
                if with_adapters else []
            shapes = [s for s in shapes if s.startswith(with_adapters)] \
                if with_adapters else []
        if not (missing or unexpected or shapes):
            return
        what = 'resume from' if resume else 'load'
        hint = ''
        meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
        if meta.get('format') == 'mmslora-adapter-v1':
            hint = (' This is an adapter-only file (tools/export_adapter.py): load it with '
                    'mmslora.utils.load_adapter onto the model with its pretrained '
                    'backbone, or give the full training checkpoint.')
        raise CheckpointMismatchError(
            f'Cannot {what} checkpoint {self._filename(runner)!r}: it does not fit the '
            f'model (nothing was loaded): {mismatch_summary(missing, unexpected, shapes)}. '
            'It was saved from a model built with another config (another backbone, '
            'block selection or adapter config such as hidden_dim or groups): build the '
            'model from the config it was trained with (a Runner checkpoint keeps it in '
            "meta['cfg']), or train from scratch without resume/load_from." + hint +
            _wrapper_config_diff(meta.get('cfg') or meta.get('config'),
                                 getattr(runner, 'cfg', None)),
            missing, unexpected, shapes)

    @staticmethod
    def _warn_unwrapped(runner, state, expected, prefixes, with_adapters) -> None:
        # an upstream checkpoint's `backbone.conv1.weight` is `backbone.backbone.conv1...`
        # here: mmengine drops it with a generic "unexpected key" warning
        dropped = [k for k in state if k not in expected and k.startswith(prefixes)
                   and not k.startswith(with_adapters or ('\0', ))]
        fits = [k for k in dropped for p in prefixes
                if k.startswith(p) and f'{p}backbone.{k[len(p):]}' in expected]
        if fits:
            runner.logger.warning(
                f'CheckpointFitHook: {len(fits)} keys of the checkpoint, e.g. {fits[:3]}, '
                'belong to an unwrapped backbone and are not loaded: inside '
                "MSLoRABackbone the backbone's keys are '<wrapper>.backbone.*'. Load a "
                "backbone checkpoint through the wrapped backbone's init_cfg "
                "(dict(type='Pretrained', checkpoint=..., prefix='backbone.')) instead.")

    @staticmethod
    def _filename(runner) -> str:
        if getattr(runner, '_load_from', None):
            return str(runner._load_from)
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
            diffs += [f'{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}'
                      for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    except Exception:  # the saved config may not parse here; the key list suffices
        return ''
    return f' The MSLoRABackbone settings differ: {diffs[:6]}.' if diffs else ''
