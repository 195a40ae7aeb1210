"""mmslora.RandomStateHook's pieces (the whole hook: tests/test_engine/test_resume_exact.py):
the random state round trip and the restore right before the first new batch."""

import random

import numpy as np
import torch

from mmslora.engine.hooks.random_state import (
    _get_random_state,
    _RestoreBeforeFetch,
    _set_random_state,
)


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_random_state_round_trip():
    state = _get_random_state()
    first = draws()
    _set_random_state(state)
    assert draws() == first


def test_restore_runs_right_before_the_first_batch_after_the_replay():
    calls = []
    batches = iter(range(5))
    wrapped = _RestoreBeforeFetch(batches, skip=2, restore=lambda: calls.append('restore'))

    def fetch():
        calls.append(next(wrapped))

    fetch()
    fetch()
    assert calls == [0, 1]  # the replayed batches
    fetch()
    fetch()
    assert calls == [0, 1, 'restore', 2, 3]  # once, before the first new batch
