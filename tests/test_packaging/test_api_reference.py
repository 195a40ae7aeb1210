"""Every module of the package has its page in the API reference (docs/api/*.md), so a
new module cannot slip out of the documentation, and the reference names no module that
is gone. Package ``__init__`` files (they re-export their modules' names), private
modules and ``mmslora.version`` are not required."""

import glob
import os.path as osp
import pkgutil
import re

import mmslora

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _all_modules() -> dict:
    """Module name -> whether it is a package, for mmslora and everything below it."""
    found = {mmslora.__name__: True}
    for info in pkgutil.walk_packages(mmslora.__path__, mmslora.__name__ + '.'):
        found[info.name] = info.ispkg
    return found


def _documented_modules() -> set:
    documented = set()
    for page in glob.glob(osp.join(ROOT, 'docs', 'api', '*.md')):
        with open(page) as f:
            documented |= set(re.findall(r'automodule:: ([\w.]+)', f.read()))
    return documented


def test_every_module_is_in_the_api_reference():
    required = {
        name
        for name, is_package in _all_modules().items()
        if not is_package
        and not name.rsplit('.', 1)[-1].startswith('_')
        and name != 'mmslora.version'
    }
    missing = sorted(required - _documented_modules())
    assert not missing, (
        f'modules missing from docs/api/*.md (add an `.. automodule::` '
        f'line to the page of their subpackage): {missing}'
    )


def test_the_api_reference_names_only_modules_that_exist():
    stale = sorted(_documented_modules() - set(_all_modules()))
    assert not stale, f'docs/api/*.md documents modules that no longer exist: {stale}'
