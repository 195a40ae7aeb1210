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
