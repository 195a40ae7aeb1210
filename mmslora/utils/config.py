"""Config files by name (``mmslora::...``) and building a model from one without
data, as the tools do."""

import glob
import os.path as osp
from typing import List, Optional, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

#: The folder of the mmslora package.
PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: mmslora's configs as the installed package has them (OpenMMLab's layout, which
#: mim reads too): the repository's ``configs/`` (a symlink there; a wheel has a copy).
CONFIG_ROOT = osp.join(PACKAGE_DIR, '.mim', 'configs')
CONFIG_PREFIX = 'mmslora::'


def shipped_configs() -> List[str]:
    """The shipped config files, relative to :data:`CONFIG_ROOT` (the names after
    ``mmslora::``), sorted: ``'_base_/mslora.py'``, ``'mmdet/...'``, ..."""
    files = glob.glob(osp.join(CONFIG_ROOT, '**', '*.py'), recursive=True)
    return sorted(osp.relpath(f, CONFIG_ROOT) for f in files)


def shipped_config(name: str) -> str:
    """The file of the shipped config ``name`` (``'_base_/mslora.py'``: what follows
    ``mmslora::`` in a ``_base_``); ``FileNotFoundError`` naming the shipped ones
    for a name that is not."""
    path = osp.join(CONFIG_ROOT, name)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'{CONFIG_PREFIX}{name}: mmslora ships no such config (looked in '
            f'{CONFIG_ROOT}). Its configs: '
            f'{", ".join(CONFIG_PREFIX + c for c in shipped_configs())}'
        )
    return path


def resolve_config(name: str) -> str:
    """The file of a config given on a command line: a ``mmslora::`` name is the
    shipped config, anything else a path, returned as it is."""
    if name.startswith(CONFIG_PREFIX):
        return shipped_config(name[len(CONFIG_PREFIX) :])
    return name


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Load the config file ``path`` (or a ``mmslora::`` name) and apply
    ``cfg_options``."""
    cfg = Config.fromfile(resolve_config(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_model_from_config(cfg: Config, init_weights: bool = False) -> nn.Module:
    """Build ``cfg.model`` in the config's default scope (``mmdet``, ``mmseg``, ...).

    With ``init_weights`` the pretrained ``init_cfg`` of the backbone is loaded (it may
    need a download); without, the model keeps its constructor initialisation.
    """
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model)
    if init_weights:
        model.init_weights()
    return model


def disable_pretrained(cfg: Config, keys: Sequence[str] = ('init_cfg', 'pretrained')) -> Config:
    """Turn off every pretrained load in ``cfg.model`` (for offline builds and tests):
    ``init_cfg`` of type ``Pretrained`` and ``pretrained`` entries become None."""

    def visit(node):
        if isinstance(node, dict):
            for key in list(node):
                value = node[key]
                if key in keys and (
                    isinstance(value, str)
                    or (isinstance(value, dict) and value.get('type') == 'Pretrained')
                ):
                    node[key] = None
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)

    visit(cfg.model)
    return cfg
