"""The package's layers: ``mmslora.utils`` and ``mmslora.compat`` import nothing above
them, the subpackages import each other without circles, and only
``mmslora.compat`` touches private mmengine attributes."""

import ast
import glob
import os.path as osp

import pytest

from mmslora.compat.mmengine import PRIVATE_ATTRIBUTE_NAMES

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'mmslora')
FILES = sorted(glob.glob(osp.join(PACKAGE, '**', '*.py'), recursive=True))
#: what each bottom layer may import from mmslora
BOTTOM_LAYERS = {
    'mmslora.compat': ('mmslora.compat',),
    'mmslora.utils': ('mmslora.utils', 'mmslora.compat', 'mmslora.version'),
}


def module_name(path):
    rel = osp.splitext(osp.relpath(path, ROOT))[0].split(osp.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def parse(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def mmslora_imports(path, name=None):
    """The mmslora modules ``path`` (the module ``name``, by default from its path)
    imports: ``import``/``from`` statements anywhere in the file, relative ones
    resolved, and ``import_module('...')`` literals."""
    name = name or module_name(path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package.split('.')[: len(package.split('.')) - node.level + 1]
                base = '.'.join(parent + ([base] if base else []))
            # `from mmslora import models` imports mmslora.models
            found += [f'{base}.{a.name}' for a in node.names] if base == 'mmslora' else [base]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, 'attr', getattr(node.func, 'id', None))
            in ('import_module', '__import__')
        ):
            found.append(node.args[0].value)
    return [m for m in found if m == 'mmslora' or m.startswith('mmslora.')]


def within(module, prefixes):
    return any(module == p or module.startswith(p + '.') for p in prefixes)


@pytest.mark.parametrize('layer', sorted(BOTTOM_LAYERS))
def test_bottom_layers_import_nothing_above_them(layer):
    files = [f for f in FILES if within(module_name(f), (layer,))]
    assert files
    bad = [
        (module_name(f), m)
        for f in files
        for m in mmslora_imports(f)
        if not within(m, BOTTOM_LAYERS[layer])
    ]
    assert not bad, f'{layer} must only import {BOTTOM_LAYERS[layer]}: {bad}'


def test_the_checker_sees_every_kind_of_import(tmp_path):
    path = tmp_path / 'probe.py'
    path.write_text(
        'import mmslora.engine\nfrom .. import models\nfrom ..cli import x\n'
        'from mmslora import registry\n'
        'def f():\n    importlib.import_module("mmslora.models.wrapper")\n'
    )
    found = mmslora_imports(str(path), 'mmslora.utils.probe')
    assert found == [
        'mmslora.engine',
        'mmslora.models',
        'mmslora.cli',
        'mmslora.registry',
        'mmslora.models.wrapper',
    ]


def subpackage(module):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def test_no_import_circles_between_subpackages():
    graph = {}
    for path in FILES:
        src = subpackage(module_name(path))
        for target in map(subpackage, mmslora_imports(path)):
            if src and target and target != src:
                graph.setdefault(src, set()).add(target)

    def cycle_from(node, trail):
        if node in trail:
            return trail[trail.index(node) :] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, trail + [node])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, []) for n in sorted(graph)) if c]
    assert not cycles, f'import circles between subpackages: {cycles}'


def private_uses(path):
    """``(line, name)`` for every use of a :data:`PRIVATE_ATTRIBUTE_NAMES` name in
    ``path``: attribute access, ``getattr``-style string, imported name."""
    uses = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTE_NAMES:
            uses.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_ATTRIBUTE_NAMES:
            uses.append((node.lineno, node.value))
        elif isinstance(node, ast.ImportFrom):
            uses += [(node.lineno, a.name) for a in node.names if a.name in PRIVATE_ATTRIBUTE_NAMES]
    return uses


def test_only_compat_touches_private_mmengine_attributes():
    compat = osp.join(PACKAGE, 'compat')
    uses = {
        osp.relpath(f, ROOT): private_uses(f) for f in FILES if not f.startswith(compat + osp.sep)
    }
    uses = {f: u for f, u in uses.items() if u}
    assert not uses, f'private mmengine attributes outside mmslora/compat: {uses}'
    assert private_uses(osp.join(compat, 'mmengine.py'))  # the check can find them
