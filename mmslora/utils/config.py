"""Building a model from a config file without data, as the tools do."""
from typing import Optional, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    cfg = Config.fromfile(path)
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
                if key in keys and (isinstance(value, str) or (
                        isinstance(value, dict) and value.get('type') == 'Pretrained')):
                    node[key] = None
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                visit(item)
    visit(cfg.model)
    return cfg
