"""mmslora.utils.checkpoint.loader: safe_torch_load loads what Runner checkpoints
hold, weights-only."""
import io
import pickle

import numpy as np
import pytest
import torch
from mmengine.runner import checkpoint as mm_checkpoint

import mmslora  # noqa: F401  (installs the safe loader)
from mmslora.utils.checkpoint import safe_torch_load

# mmengine's own local loader, kept by its module under its original name.
MMENGINE_LOAD_FROM_LOCAL = mm_checkpoint.load_from_local


def test_plain_weights_only_load_fails_on_runner_checkpoint(runner_checkpoint):
    path = runner_checkpoint
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(str(path), weights_only=True)
    # ... and so does mmengine's own local loader on this torch
    with pytest.raises(pickle.UnpicklingError):
        MMENGINE_LOAD_FROM_LOCAL(str(path), 'cpu')
    ckpt = safe_torch_load(path, map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    hub = ckpt['message_hub']['log_scalars']
    assert type(hub['train/loss']).__name__ == 'HistoryBuffer'
    assert hub['train/loss'].mean() > 0  # statistics methods work after load
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float32)


def test_file_object(runner_checkpoint):
    assert safe_torch_load(io.BytesIO(runner_checkpoint.read_bytes()))['meta']['iter'] == 4


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / 'nope.pth')
