"""mmslora: MSLoRA adapters for the OpenMMLab toolboxes.

``import mmslora`` (or ``custom_imports=dict(imports=['mmslora'])`` in a config)
registers ``mmslora.MSLoRABackbone``, ``mmslora.MSLoRAAdapter`` and the rest, and
lets configs inherit mmslora's shipped configs by name:
``_base_ = ['mmdet::...', 'mmslora::_base_/mslora.py']``.
"""

from . import _deprecated
from .version import __version__

_deprecated.install()  # old import paths keep working, with a DeprecationWarning

from . import datasets, engine, models  # noqa: F401,E402  (registers the modules)
from .models import MSLoRAAdapter, MSLoRABackbone  # noqa: E402

__all__ = ['__version__', 'MSLoRAAdapter', 'MSLoRABackbone']

# Load checkpoints weights-only with an explicit allowlist (torch >= 2.6 safe).
from .utils.checkpoint import install_safe_checkpoint_loading  # noqa: E402

install_safe_checkpoint_loading()

# `_base_ = 'mmslora::<config>'` in any config names a shipped config (mmslora/.mim/configs).
from .compat.mmengine import register_config_package  # noqa: E402
from .utils.config import shipped_config  # noqa: E402

register_config_package('mmslora', shipped_config)
