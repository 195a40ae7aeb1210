"""Sphinx configuration of mmslora's documentation (``make docs``).

The guides are MyST Markdown (``docs/*.md``); the API reference (``docs/api/``) is
generated from the docstrings (Google style) by autodoc and napoleon, so building it
imports mmslora and the OpenMMLab stack.
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

version_ns = {}
with open(os.path.join(ROOT, 'mmslora', 'version.py')) as f:
    exec(f.read(), version_ns)

project = 'mmslora'
author = 'the mmslora authors'
copyright = '2026, the mmslora authors'
release = version_ns['__version__']
version = release

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
root_doc = 'index'
exclude_patterns = ['_build']

# MyST: `#heading` anchors in links, ```{directive}``` fences, $...$ maths.
myst_heading_anchors = 3
myst_enable_extensions = ['colon_fence', 'dollarmath']

# Autodoc: members in source order, the signature's types in the description.
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
# Only mmslora's own docstrings: torch's and mmengine's inherited ones cite their own labels.
autodoc_inherit_docstrings = False
autodoc_default_options = {'members': True, 'show-inheritance': True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'furo'
html_title = f'mmslora {release}'
