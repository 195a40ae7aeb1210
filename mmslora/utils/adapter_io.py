"""Adapter-only checkpoints: everything a model trained beyond its frozen backbone.

A model with ``MSLoRABackbone`` wrappers is its frozen, pretrained backbones plus
what was trained: the adapters, any unfrozen backbone parameters, and the rest of
the model (necks, heads). The adapter file keeps exactly that (``state_dict`` minus
the frozen backbone tensors) and a ``meta`` with the mmslora version and the
adapter configs, the way peft writes ``adapter_config.json``. Loading fills the
frozen keys from the live model, whose backbone holds the pretrained weights.

The multiplicative MSLoRA branch ``Proj(F) * Trans(F)`` depends on ``F`` nonlinearly,
so unlike LoRA it cannot be merged into the backbone's weights: the adapters stay
modules at inference.
"""
import os
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from mmslora.version import __version__

FORMAT = 'mmslora-adapter-v1'


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; raised before anything is copied.

    Attributes:
        missing (list[str]): keys the model has and the checkpoint lacks.
        unexpected (list[str]): keys the checkpoint has and the model lacks.
        shapes (list[str]): ``'key: file (..) vs model (..)'`` for each shape mismatch.
    """

    def __init__(self, message: str, missing=(), unexpected=(), shapes=()):
        super().__init__(message)
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)


def _wrappers(model: nn.Module) -> Dict[str, nn.Module]:
    from mmslora.models.wrapper import MSLoRABackbone
    return {name: m for name, m in model.named_modules() if isinstance(m, MSLoRABackbone)}


def frozen_backbone_keys(model: nn.Module) -> List[str]:
    """State-dict keys of ``model`` that belong to frozen wrapped backbones."""
    keys = []
    for name, wrapper in _wrappers(model).items():
        prefix = f'{name}.backbone.' if name else 'backbone.'
        trainable = {n for n, p in wrapper.backbone.named_parameters() if p.requires_grad}
        keys += [prefix + k for k in wrapper.backbone.state_dict() if k not in trainable]
    return keys


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` without the frozen backbone tensors (detached copies)."""
    if not _wrappers(model):
        raise ValueError('the model has no MSLoRABackbone: there is no frozen backbone to '
                         'leave out; save the full state dict instead.')
    frozen = set(frozen_backbone_keys(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def adapter_meta(model: nn.Module) -> dict:
    """Version and adapter configs of every wrapper in ``model``."""
    return dict(
        format=FORMAT, mmslora_version=__version__,
        wrappers={name or '<root>': dict(
            adapter=None if w.adapter_cfg is None else dict(w.adapter_cfg),
            blocks=dict(w.block_layouts), layers=list(getattr(w, 'layer_names', [])),
            trainable=list(w.trainable), freeze=getattr(w, 'freeze', True))
                  for name, w in _wrappers(model).items()})


def save_adapter(model: nn.Module, path: str, extra_meta: Optional[dict] = None) -> dict:
    """Write the adapter-only checkpoint of ``model`` to ``path``; return its meta."""
    meta = adapter_meta(model)
    meta.update(extra_meta or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(dict(meta=meta, state_dict=adapter_state_dict(model)), path)
    return meta


def _head(items: list) -> str:
    return f'{items[:5]}{" ..." if len(items) > 5 else ""} ({len(items)} in all)'


def state_dict_mismatches(expected: Mapping[str, torch.Tensor],
                          state: Mapping[str, torch.Tensor]) -> Tuple[list, list, list]:
    """``(missing, unexpected, shape mismatches)`` of ``state`` against ``expected``,
    each sorted; shape mismatches read ``'key: file (..) vs model (..)'``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
                    for k, v in expected.items()
                    if k in state and tuple(state[k].shape) != tuple(v.shape))
    return missing, unexpected, shapes


def mismatch_summary(missing: list, unexpected: list, shapes: list) -> str:
    """``'missing keys [...] (n in all); unexpected keys ...; shape mismatches ...'``."""
    return (f'missing keys {_head(missing)}; unexpected keys {_head(unexpected)}; '
            f'shape mismatches {_head(shapes)}')


def load_adapter(model: nn.Module, checkpoint) -> dict:
    """Load an adapter checkpoint (a path or the dict :func:`save_adapter` wrote).

    Every key and shape is checked before anything is copied: a file for another
    backbone, block selection or adapter config raises ``ValueError`` listing the
    mismatched keys and shapes, and ``model`` is left unchanged. Returns the meta.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        from mmslora.utils.checkpoint import safe_torch_load
        checkpoint = safe_torch_load(checkpoint, map_location='cpu')
    if not isinstance(checkpoint, dict) or checkpoint.get('meta', {}).get('format') != FORMAT:
        raise ValueError('not an mmslora adapter checkpoint (no meta.format == '
                         f'{FORMAT!r}); export one with tools/export_adapter.py, or load a '
                         'full checkpoint with mmengine.runner.load_checkpoint.')
    state = checkpoint['state_dict']
    expected = adapter_state_dict(model)
    missing, unexpected, shapes = state_dict_mismatches(expected, state)
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            'the adapter checkpoint does not fit this model (nothing was loaded): '
            f'{mismatch_summary(missing, unexpected, shapes)}. Build the model from the '
            'config the adapters were trained with; the file says: '
            f'{checkpoint["meta"].get("wrappers")}.', missing, unexpected, shapes)
    full = model.state_dict()
    full.update(state)
    model.load_state_dict(full, strict=True)
    return checkpoint['meta']
