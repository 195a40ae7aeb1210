import os
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from mmslora_testing import load_tool  # noqa: E402

#: environment variable naming the device of the device-parametrised tests (as --device)
DEVICE_ENV = 'MMSLORA_TEST_DEVICE'
DEVICE_CHOICES = ('cpu', 'cuda', 'auto')


def pytest_addoption(parser):
    parser.addoption(
        '--device',
        choices=DEVICE_CHOICES,
        default=None,
        help="device of the tests that take the `device` fixture: 'cpu' (default), 'cuda' "
        f"(fails at once without a GPU) or 'auto' (cuda where torch sees one); "
        f"default from ${DEVICE_ENV}, else cpu. Tests marked `cuda` run wherever torch "
        "sees a GPU and are skipped elsewhere.",
    )


def _device_name(config) -> str:
    name = config.getoption('--device') or os.environ.get(DEVICE_ENV) or 'cpu'
    if name not in DEVICE_CHOICES:
        raise pytest.UsageError(f'{DEVICE_ENV}={name!r}: use one of {", ".join(DEVICE_CHOICES)}')
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise pytest.UsageError(
            f'--device cuda: torch {torch.__version__} sees no CUDA device here (torch built '
            f'for CUDA {torch.version.cuda}); run on a GPU machine, or use --device cpu'
        )
    return name


def pytest_configure(config):
    config.mmslora_device = _device_name(config)


def pytest_report_header(config):
    return f'mmslora test device: {config.mmslora_device}'


def pytest_collection_modifyitems(config, items):
    """Mark the tests that take the ``device`` fixture ``device`` (the GPU leg selects
    them with ``-m "device or cuda"``), and skip ``cuda`` tests where there is no GPU."""
    skip_cuda = pytest.mark.skip(
        reason=f'needs a CUDA GPU: torch {torch.__version__} sees '
        'none here (the GPU leg: make test-gpu, docs/gpu.md)'
    )
    for item in items:
        if 'device' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.device)
        if item.get_closest_marker('cuda') and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(scope='session')
def device(pytestconfig) -> torch.device:
    """The device of a device-parametrised test: CPU unless ``--device`` or
    ``$MMSLORA_TEST_DEVICE`` says otherwise. On CUDA, TF32 is off for matrix products and
    convolutions (cuDNN's default is on), so that float32 comparisons against a reference
    keep float32's precision."""
    name = pytestconfig.mmslora_device
    if name == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.device(name)


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
