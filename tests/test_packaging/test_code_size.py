"""One job per class, small functions: no class over 300 lines and no function over 60
lines anywhere in ``mmslora/`` (a definition's lines, decorators and docstring included)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / 'mmslora'
LIMITS = {ast.ClassDef: 300, ast.FunctionDef: 60, ast.AsyncFunctionDef: 60}


def oversized(path: pathlib.Path):
    """``(kind, name, first line, lines)`` of each definition in ``path`` over its limit."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        limit = LIMITS.get(type(node))
        if limit is None:
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        lines = node.end_lineno - first + 1
        if lines > limit:
            yield type(node).__name__, node.name, first, lines


def test_the_limits_are_checked_on_a_real_offender(tmp_path):
    body = '\n'.join(f'    x{i} = {i}' for i in range(60))
    path = tmp_path / 'big.py'
    path.write_text(f'def big():\n{body}\n\n\ndef small():\n    return 1\n')
    assert list(oversized(path)) == [('FunctionDef', 'big', 1, 61)]


@pytest.mark.parametrize(
    'path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: str(p.relative_to(PACKAGE.parent))
)
def test_no_class_over_300_lines_and_no_function_over_60(path):
    found = [
        f'{kind} {name} (line {line}): {lines} lines' for kind, name, line, lines in oversized(path)
    ]
    assert not found, (
        f'{path.relative_to(PACKAGE.parent)}: {"; ".join(found)}; split it '
        f'(classes up to 300 lines, functions up to 60)'
    )
