"""Adapter files: everything a model trained beyond its frozen backbone, without pickle.

A model with ``MSLoRABackbone`` wrappers is its frozen, pretrained backbones plus
what was trained: the adapters, any unfrozen backbone parameters, and the rest of
the model (necks, heads). :func:`save_adapter` writes exactly that (``state_dict``
minus the frozen backbone tensors) into a directory, the way peft's
``save_pretrained`` does::

    <dir>/adapter_model.safetensors    the tensors (safetensors: no pickle, nothing runs on load)
    <dir>/adapter_config.json          format, mmslora and torch versions, and per wrapper:
                                       the backbone's type, every adapter set (its
                                       config, blocks or layers), trainable, freeze, ...

With ``adapter_name`` only that adapter set is written (its adapters, keys relative to
the set), so one frozen backbone in memory can serve several tasks, each from its own
file. :func:`load_adapter` checks every key and shape before anything is copied,
fills the frozen keys from the live model (whose backbone holds the pretrained
weights), and builds an adapter set the file names but the model lacks from the
file's config. Files of the earlier format (a ``.pth`` with ``meta`` and
``state_dict``) load through the safe weights-only loader.

The multiplicative MSLoRA branch ``Proj(F) * Trans(F)`` depends on ``F`` nonlinearly,
so unlike LoRA it cannot be merged into the backbone's weights: the adapters stay
modules at inference.
"""

import json
import os
import os.path as osp
import re
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmslora.utils.checkpoint import DamagedCheckpointError, safe_torch_load
from mmslora.utils.state_dict import (
    CheckpointMismatchError,
    mismatch_summary,
    state_dict_mismatches,
)
from mmslora.version import __version__
from .base import find_wrappers
from .wrapper import with_default_width

__all__ = [
    'FORMAT',
    'LEGACY_FORMAT',
    'WEIGHTS_NAME',
    'CONFIG_NAME',
    'frozen_backbone_keys',
    'adapter_state_dict',
    'adapter_set_state_dict',
    'adapter_meta',
    'save_adapter',
    'load_adapter',
]

FORMAT = 'mmslora-adapter-v2'
LEGACY_FORMAT = 'mmslora-adapter-v1'
WEIGHTS_NAME = 'adapter_model.safetensors'
CONFIG_NAME = 'adapter_config.json'
ROOT = '<root>'  # how a wrapper that is the model itself is named in the meta


def _wrappers(model: nn.Module) -> Dict[str, nn.Module]:
    wrappers = find_wrappers(model)
    if not wrappers:
        raise ValueError(
            'the model has no MSLoRABackbone: there is no frozen backbone to '
            'leave out; save the full state dict instead.'
        )
    return wrappers


def _prefix(name: str) -> str:
    return f'{name}.' if name else ''


def frozen_backbone_keys(model: nn.Module) -> List[str]:
    """State-dict keys of ``model`` that belong to frozen wrapped backbones."""
    keys = []
    for name, wrapper in find_wrappers(model).items():
        prefix = f'{_prefix(name)}backbone.'
        trainable = {n for n, p in wrapper.backbone.named_parameters() if p.requires_grad}
        keys += [prefix + k for k in wrapper.backbone.state_dict() if k not in trainable]
    return keys


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` without the frozen backbone tensors (detached copies)."""
    _wrappers(model)
    frozen = set(frozen_backbone_keys(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def adapter_set_state_dict(model: nn.Module, adapter_name: str) -> Dict[str, torch.Tensor]:
    """The tensors of adapter set ``adapter_name`` of every wrapper in ``model``, keyed
    ``<wrapper name>.<key in the set>`` (no wrapper prefix for a model that is the
    wrapper), detached copies."""
    return {
        _prefix(name) + k: v.detach().clone()
        for name, wrapper in _wrappers(model).items()
        for k, v in wrapper.adapter_set(adapter_name).modules.state_dict().items()
    }


def _jsonable(value, where: str):
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f'{where} = {value!r} cannot be written to {CONFIG_NAME}; write the '
        f"config with plain values (a registered type name such as "
        f"'mmslora.MSLoRAAdapter' instead of a class)."
    )


def _wrapper_meta(wrapper, where: str) -> dict:
    default = wrapper.adapter_set('default')
    sets = {
        name: dict(adapter=s.cfg, blocks=dict(s.blocks), layers=list(s.layers))
        for name, s in ((n, wrapper.adapter_set(n)) for n in wrapper.adapter_names)
    }
    return _jsonable(
        dict(
            backbone=type(wrapper.backbone).__name__,
            adapter=default.cfg,
            blocks=dict(default.blocks),
            layers=list(default.layers),
            sets=sets,
            active=wrapper.active_adapter,
            trainable=list(wrapper.trainable),
            freeze=wrapper.freeze,
            norm_eval=wrapper.norm_eval,
            grid_from=wrapper.grid_from,
        ),
        where,
    )


def adapter_meta(model: nn.Module) -> dict:
    """Format, versions and, per wrapper (``'<root>'`` for the model itself), the
    backbone type, adapter configs and settings: what ``adapter_config.json`` holds."""
    return dict(
        format=FORMAT,
        mmslora_version=__version__,
        torch_version=str(torch.__version__),
        wrappers={
            name or ROOT: _wrapper_meta(w, f'wrapper {name or ROOT!r}')
            for name, w in _wrappers(model).items()
        },
    )


def save_adapter(
    model: nn.Module,
    path: str,
    extra_meta: Optional[dict] = None,
    adapter_name: Optional[str] = None,
) -> dict:
    """Write the adapter files of ``model`` into the directory ``path``; return the meta.

    Args:
        model: a model with one or more ``MSLoRABackbone``.
        path: the directory to write ``adapter_model.safetensors`` and
            ``adapter_config.json`` into (created if needed). A path ending in
            ``.pth`` writes the earlier single-file format (deprecated).
        extra_meta: more JSON-able entries for the config (e.g. the config file name).
        adapter_name: write only this adapter set (see :func:`adapter_set_state_dict`);
            default: everything trained (:func:`adapter_state_dict`).
    """
    meta = adapter_meta(model)
    meta.update(_jsonable(extra_meta or {}, 'extra_meta'))
    if str(path).endswith('.pth'):
        if adapter_name is not None:
            raise ValueError(
                'adapter_name needs the directory format; give a directory instead of a .pth path.'
            )
        warnings.warn(
            'save_adapter to a .pth file writes the deprecated pickle-based '
            'format; give a directory for adapter_model.safetensors + '
            'adapter_config.json.',
            DeprecationWarning,
            stacklevel=2,
        )
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        torch.save(
            dict(meta=dict(meta, format=LEGACY_FORMAT), state_dict=adapter_state_dict(model)), path
        )
        return meta
    if adapter_name is None:
        state = adapter_state_dict(model)
    else:
        state = adapter_set_state_dict(model, adapter_name)
        meta['adapter_name'] = adapter_name
    os.makedirs(path, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        osp.join(path, WEIGHTS_NAME),
        metadata=dict(format=FORMAT),
    )
    with open(osp.join(path, CONFIG_NAME), 'w') as f:
        json.dump(meta, f, indent=2)
    return meta


def _read(checkpoint):
    """``(meta, state_dict)`` of a directory, a ``.safetensors`` file, a legacy ``.pth``
    file or a legacy checkpoint dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        if osp.isfile(path) and path.endswith('.safetensors'):
            path = osp.dirname(path)
        if osp.isdir(path):
            config = osp.join(path, CONFIG_NAME)
            weights = osp.join(path, WEIGHTS_NAME)
            for needed in (config, weights):
                if not osp.isfile(needed):
                    raise FileNotFoundError(
                        f'{needed} is missing: an adapter directory holds {WEIGHTS_NAME} and '
                        f'{CONFIG_NAME} (written by mmslora.models.save_adapter or '
                        f'tools/export_adapter.py).'
                    )
            try:
                with open(config) as f:
                    meta = json.load(f)
                return meta, load_file(weights)
            except (ValueError, OSError, SafetensorError) as err:  # JSONDecodeError is one
                raise DamagedCheckpointError(
                    f'Adapter directory {path!r} is damaged or incomplete: {err}. Export '
                    f'it again (tools/export_adapter.py) or copy it again in full.',
                    path,
                    str(err),
                ) from err
        checkpoint = safe_torch_load(path, map_location='cpu')
    meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
    if meta.get('format') not in (FORMAT, LEGACY_FORMAT):
        raise ValueError(
            'not an mmslora adapter file (no format '
            f'{FORMAT!r} or {LEGACY_FORMAT!r}); export one with '
            'tools/export_adapter.py, or load a full checkpoint with '
            'mmengine.runner.load_checkpoint.'
        )
    return meta, checkpoint['state_dict']


def _exact_blocks(blocks: Dict[str, str]) -> list:
    """A ``blocks`` argument that selects exactly these block names with their layouts."""
    return [dict(pattern=re.escape(name), layout=layout) for name, layout in blocks.items()]


def _add_missing_sets(model: nn.Module, meta: dict, only: Optional[Dict[str, str]] = None):
    """Build the adapter sets the file has and the model's wrappers lack.

    ``only`` maps a set name of the file to the name to build it under (default:
    every set of the file, under its own name)."""
    for name, wrapper in find_wrappers(model).items():
        saved = meta.get('wrappers', {}).get(name or ROOT, {}).get('sets', {})
        for file_name, as_name in (only or {n: n for n in saved}).items():
            if as_name in wrapper.adapter_names or file_name not in saved:
                continue
            spec = saved[file_name]
            blocks = _exact_blocks(spec['blocks']) if spec['blocks'] else None
            # the width the file was built with: files record it since widths are
            # fitted to the backbone; an earlier file without one had the class default
            wrapper.add_adapter(as_name, with_default_width(spec['adapter']), blocks=blocks)


def load_adapter(model: nn.Module, checkpoint, adapter_name: Optional[str] = None) -> dict:
    """Load adapter files (a directory, its ``.safetensors`` file, a legacy ``.pth`` or
    the dict :func:`save_adapter` returned for one) into ``model``; return the meta.

    Every key and shape is checked before anything is copied: a file for another
    backbone, block selection or adapter config raises
    :class:`~mmslora.utils.state_dict.CheckpointMismatchError` listing the mismatched
    keys and shapes, and ``model`` is left unchanged (but for adapter sets built for
    the file). A file of one adapter set loads into the set ``adapter_name``
    (default: the set's own name), built from the file's config if the model lacks
    it; a file of a whole model also builds the named sets it has and the model lacks.
    """
    meta, state = _read(checkpoint)
    set_name = meta.get('adapter_name')
    if set_name is None and adapter_name is not None:
        raise ValueError(
            f'this adapter file holds a whole model, not one adapter set; '
            f'load it without adapter_name (got {adapter_name!r}).'
        )
    if set_name is not None:
        target = adapter_name or set_name
        _add_missing_sets(model, meta, only={set_name: target})
        expected = adapter_set_state_dict(model, target)
    else:
        if meta.get('format') == FORMAT:
            _add_missing_sets(model, meta)
        expected = adapter_state_dict(model)
    missing, unexpected, shapes = state_dict_mismatches(expected, state)
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            'the adapter file does not fit this model (nothing was loaded): '
            f'{mismatch_summary(missing, unexpected, shapes)}. Build the model from the '
            'config the adapters were trained with; the file says: '
            f'{meta.get("wrappers")}.',
            missing,
            unexpected,
            shapes,
        )
    if set_name is not None:
        for name, wrapper in find_wrappers(model).items():
            prefix = _prefix(name)
            wrapper.adapter_set(target).modules.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True
            )
    else:
        full = model.state_dict()
        full.update(state)
        model.load_state_dict(full, strict=True)
    return meta
