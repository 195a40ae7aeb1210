"""mmslora.utils.checkpoint.loader: safe_torch_load loads what Runner checkpoints
hold, weights-only, on both paths (``loading_path``: torch's allowlist API, or the
restricted unpickler of torch < 2.5)."""

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
TORCH_VERSION = tuple(int(part) for part in torch.__version__.split('.')[:2])


@pytest.mark.usefixtures('loading_path')
def test_plain_weights_only_load_fails_on_runner_checkpoint(runner_checkpoint):
    path = runner_checkpoint
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(str(path), weights_only=True)
    ckpt = safe_torch_load(path, map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    hub = ckpt['message_hub']['log_scalars']
    assert type(hub['train/loss']).__name__ == 'HistoryBuffer'
    assert hub['train/loss'].mean() > 0  # statistics methods work after load
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float32)


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason=f'torch {torch.__version__} < 2.6 defaults to weights_only=False: there '
    "mmengine's own loader unpickles anything (mmslora replaces it, test_checkpoint_schemes)",
)
def test_mmengine_own_loader_fails_on_runner_checkpoint(runner_checkpoint):
    with pytest.raises(pickle.UnpicklingError):
        MMENGINE_LOAD_FROM_LOCAL(str(runner_checkpoint), 'cpu')


@pytest.mark.usefixtures('loading_path')
def test_file_object(runner_checkpoint):
    assert safe_torch_load(io.BytesIO(runner_checkpoint.read_bytes()))['meta']['iter'] == 4


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / 'nope.pth')


@pytest.mark.parametrize('loading_path', ['restricted-unpickler'], indirect=True)
def test_forced_weights_only_is_named_on_the_restricted_path(
    runner_checkpoint, loading_path, monkeypatch
):
    """torch < 2.5 refuses any pickle_module under TORCH_FORCE_WEIGHTS_ONLY_LOAD."""
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(RuntimeError, match='Unset TORCH_FORCE_WEIGHTS_ONLY_LOAD'):
        safe_torch_load(runner_checkpoint)
