"""Old import paths keep working for one release: the same objects as the new paths,
with a DeprecationWarning that names the new path."""

import importlib
import sys

import pytest

import mmslora  # noqa: F401  (installs the old paths)
from mmslora import _deprecated

MOVED_NAMES = [
    (old, new, name) for old, (new, names) in _deprecated.MOVED_NAMES.items() for name in names
]


def expected_warning(old, new):
    return pytest.warns(
        DeprecationWarning,
        match=f'^{old} moved to {new}; the old path will be removed in the next release$',
    )


@pytest.mark.parametrize('old, new', sorted(_deprecated.MOVED_MODULES.items()))
def test_old_module_path_is_the_new_module(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # import it afresh
    with expected_warning(old, new):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    parent, _, child = old.rpartition('.')
    assert getattr(sys.modules[parent], child) is module


def test_from_import_of_an_old_module(monkeypatch):
    monkeypatch.delitem(sys.modules, 'mmslora.engine.training', raising=False)
    with expected_warning('mmslora.engine.training', 'mmslora.cli'):
        from mmslora.engine.training import prepare_train_config
    from mmslora.cli import prepare_train_config as new

    assert prepare_train_config is new


@pytest.mark.parametrize('old, new, name', MOVED_NAMES)
def test_old_package_attribute_is_the_new_object(old, new, name):
    package = importlib.import_module(old)
    with expected_warning(f'{old}.{name}', f'{new}.{name}'):
        value = getattr(package, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_of_an_old_name_warns_at_the_import():
    with pytest.warns(DeprecationWarning) as record:
        from mmslora.utils import count_parameters  # noqa: F401
    assert record[0].filename == __file__


def test_other_names_stay_missing():
    import mmslora.utils

    with pytest.raises(AttributeError, match='no attribute'):
        mmslora.utils.no_such_name  # noqa: B018
    assert not hasattr(mmslora.utils, 'MSLoRABackbone')


def test_install_is_idempotent():
    finders = len(sys.meta_path)
    _deprecated.install()
    assert len(sys.meta_path) == finders
