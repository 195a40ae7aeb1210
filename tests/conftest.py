import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from mmslora_testing import load_tool  # noqa: E402


@pytest.fixture(scope='session')
def nuclei_root(tmp_path_factory):
    """The embedded nuclei data converted once per session."""
    out = tmp_path_factory.mktemp('nuclei')
    load_tool('tools/dataset_converters/nuclei.py').convert_nuclei(str(out))
    return str(out) + '/'


@pytest.fixture(scope='session')
def fashion_root(tmp_path_factory):
    out = tmp_path_factory.mktemp('fashion_mnist')
    load_tool('tools/dataset_converters/fashion_mnist.py').convert_fashion_mnist(str(out))
    return str(out) + '/'


@pytest.fixture
def one_thread():
    """Train in-process on one thread: on a shared 2-core machine two intra-op threads
    per process oversubscribe the cores and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_default_scope():
    """Leave mmengine's default scope as it was: building from a config
    (``build_model_from_config``) sets it for the whole process, and a later test that
    builds unscoped types would look them up in that toolbox."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmengine'):
        yield
