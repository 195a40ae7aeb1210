"""``mmslora.RandomStateHook``: exact resume, the global random state included."""

import random
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from mmslora.compat.mmengine import (
    loop_dataloader_iterator,
    runner_is_resuming,
    runner_randomness_cfg,
    set_loop_dataloader_iterator,
)
from mmslora.registry import HOOKS


def _get_random_state() -> dict:
    """The global random generators' state, in types a weights-only load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = dict(
        python=[version, list(internal), gauss],
        numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        torch=torch.get_rng_state(),
    )
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
    """Wraps an ``IterBasedTrainLoop``'s batch iterator: after ``skip`` batches (the
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
            state,
            world_size=runner.world_size,
            diff_rank_seed=bool(runner_randomness_cfg(runner).get('diff_rank_seed')),
        )

    def before_val(self, runner) -> None:
        self._before_val = _get_random_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            _set_random_state(self._before_val)
            self._before_val = None

    # ------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = None
        if not runner_is_resuming(runner):
            return  # load_from without resume: a new run
        state = checkpoint.get('rng_state')
        if state is None:
            runner.logger.warning(
                'RandomStateHook: the checkpoint holds no random state (written without '
                'this hook); the resumed run draws other random numbers than the '
                'uninterrupted one would have.'
            )
        elif state.get('world_size', 1) > 1 and state.get('diff_rank_seed'):
            runner.logger.warning(
                'RandomStateHook: the checkpoint is from a distributed run with '
                'diff_rank_seed=True; only rank 0\'s random state was saved, so it is '
                'not restored.'
            )
        else:
            self._pending = state

    def before_train(self, runner) -> None:
        if self._pending is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            set_loop_dataloader_iterator(
                loop,
                _RestoreBeforeFetch(
                    loop_dataloader_iterator(loop), loop.iter, self._restore_pending
                ),
            )
        elif not isinstance(loop, EpochBasedTrainLoop):
            runner.logger.warning(
                f'RandomStateHook: cannot restore the random state for a '
                f'{type(loop).__name__}; it is restored when training starts.'
            )
            self._restore_pending()

    def before_train_epoch(self, runner) -> None:
        if self._pending is not None and isinstance(runner.train_loop, EpochBasedTrainLoop):
            per_epoch = len(runner.train_dataloader)
            if runner.iter != runner.epoch * per_epoch:
                runner.logger.warning(
                    'RandomStateHook: resumed from a checkpoint written inside an epoch; '
                    'EpochBasedTrainLoop restarts that epoch, so the random state is not '
                    'restored.'
                )
                self._pending = None
            else:
                self._restore_pending()

    def after_train(self, runner) -> None:
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            iterator = loop_dataloader_iterator(loop)
            if isinstance(iterator, _RestoreBeforeFetch):
                set_loop_dataloader_iterator(loop, iterator.iterator)

    def _restore_pending(self) -> None:
        if self._pending is not None:
            _set_random_state(self._pending)
            self._pending = None
