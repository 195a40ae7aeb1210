import shutil

import pytest

from mmslora_testing import checkpointing_runner, snapshot


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """A short iteration-based training run: (work_dir, final weights)."""
    import mmslora  # noqa: F401  (the safe loader, before the Runner loads anything)

    work_dir = tmp_path_factory.mktemp('train')
    runner = checkpointing_runner(work_dir, 'first')
    runner.train()
    return work_dir, snapshot(runner.model)


@pytest.fixture
def runner_checkpoint(trained, tmp_path):
    """A copy of the Runner checkpoint of ``trained`` after 4 iterations."""
    path = tmp_path / 'iter_4.pth'
    shutil.copy(trained[0] / 'iter_4.pth', path)
    return path


@pytest.fixture(params=['torch-safe-globals', 'restricted-unpickler'])
def loading_path(request, monkeypatch):
    """Run a test on each of the two safe-loading paths: torch's allowlist API
    (``torch.serialization.safe_globals``, torch >= 2.5) and mmslora's restricted
    unpickler (torch < 2.5; on a newer torch forced by hiding that API)."""
    import torch

    if request.param == 'torch-safe-globals':
        if not hasattr(torch.serialization, 'safe_globals'):
            pytest.skip(
                f'torch {torch.__version__} has no torch.serialization.safe_globals '
                '(torch >= 2.5): the restricted unpickler is its only path'
            )
    else:
        for name in ('safe_globals', 'get_unsafe_globals_in_checkpoint'):
            monkeypatch.delattr(torch.serialization, name, raising=False)
    return request.param
