import importlib.util
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(relative_path: str):
    """Import a script under tools/ as a module (tools/ is not a package)."""
    path = osp.join(ROOT, relative_path)
    name = 'mmslora_tool_' + relative_path.replace('/', '_').replace('.py', '')
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


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
