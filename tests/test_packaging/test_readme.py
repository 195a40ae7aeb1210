"""The README stays a user's guide: at most 250 lines, the two set-up commands CI and a
new user run, and every local link pointing at a file that exists."""

import os.path as osp
import re

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _readme() -> str:
    with open(osp.join(ROOT, 'README.md')) as f:
        return f.read()


def test_readme_is_at_most_250_lines():
    lines = _readme().count('\n')
    assert lines <= 250, f'README.md has {lines} lines; move detail into docs/ (at most 250)'


def test_readme_names_the_two_setup_commands():
    text = _readme()
    assert re.search(r'^make demo\b', text, re.M) and re.search(r'^make test\b', text, re.M)
    with open(osp.join(ROOT, '.ci', 'run')) as f:
        assert re.search(r'^make test$', f.read(), re.M)  # CI calls the README's test command


def test_readme_links_resolve():
    links = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', _readme())
    local = [link for link in links if '://' not in link]
    assert local, 'no local links found: the pattern no longer matches the README'
    missing = [link for link in local if not osp.exists(osp.join(ROOT, link))]
    assert not missing, f'README.md links to files that do not exist: {missing}'
