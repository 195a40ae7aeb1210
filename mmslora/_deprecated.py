"""Old names that keep working, with a DeprecationWarning, for one release.

Old import paths, of two kinds, both installed by :func:`install` (``mmslora/__init__.py``
runs it first, so the lower layers never import the modules their old names point to):

* :data:`MOVED_MODULES`: an old module path is importable as an alias of the module
  it moved to (``import mmslora.engine.training`` gives ``mmslora.cli``), through a
  ``sys.meta_path`` finder;
* :data:`MOVED_NAMES`: an old package attribute resolves to the object it moved to
  (``mmslora.utils.count_parameters`` is ``mmslora.models.count_parameters``),
  through a module ``__getattr__`` (PEP 562) set on the old package.

Old methods: :func:`deprecated_method` makes a class attribute that warns and calls its
replacement (``MSLoRABackbone.adapters_of(name)`` is ``adapter_set(name).modules``).
"""

import functools
import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Callable, Dict, Tuple

#: old module path -> new module path
MOVED_MODULES: Dict[str, str] = {
    'mmslora.engine.training': 'mmslora.cli',
    'mmslora.utils.params': 'mmslora.models.params',
    'mmslora.utils.adapter_io': 'mmslora.models.adapter_io',
    'mmslora.utils.reweighting': 'mmslora.models.reweighting',
}

#: old package -> (new module, names that moved from the package to the module)
MOVED_NAMES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    'mmslora.utils': (
        'mmslora.models',
        (
            'ParameterReport',
            'count_parameters',
            'print_trainable_parameters',
            'adapter_state_dict',
            'save_adapter',
            'load_adapter',
        ),
    ),
}


def _warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    # stacklevel 3: the code that imports or reads the old name (warnings skips
    # importlib's frames)
    warnings.warn(
        f'{old} moved to {new}; the old path will be removed in the next release',
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def deprecated_method(old: str, new: str, replacement: Callable) -> Callable:
    """A method that warns ``<old> moved to <new>`` (a DeprecationWarning at the caller)
    and returns ``replacement(self, *args, **kwargs)``."""

    @functools.wraps(replacement)
    def method(*args, **kwargs):
        _warn_moved(old, new, stacklevel=3)
        return replacement(*args, **kwargs)

    method.__doc__ = f'Deprecated: use ``{new}``.'
    return method


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports each old path of :data:`MOVED_MODULES` as its new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder module, replaced in exec_module

    def exec_module(self, module) -> None:
        new = MOVED_MODULES[module.__name__]
        _warn_moved(module.__name__, new)
        # the import system returns (and binds on the parent) what sys.modules holds
        sys.modules[module.__name__] = importlib.import_module(new)


def _moved_names_getattr(old: str, new: str, names: Tuple[str, ...]):
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f'module {old!r} has no attribute {name!r}')
        _warn_moved(f'{old}.{name}', f'{new}.{name}')
        return getattr(importlib.import_module(new), name)

    return __getattr__


def install() -> None:
    """Make the old paths work (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
    for old, (new, names) in MOVED_NAMES.items():
        importlib.import_module(old).__getattr__ = _moved_names_getattr(old, new, names)
