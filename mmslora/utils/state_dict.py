"""Comparing a checkpoint's state dict with a model's, before anything is loaded."""

from typing import Mapping, Tuple

import torch


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


def _head(items: list) -> str:
    return f'{items[:5]}{" ..." if len(items) > 5 else ""} ({len(items)} in all)'


def state_dict_mismatches(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> Tuple[list, list, list]:
    """``(missing, unexpected, shape mismatches)`` of ``state`` against ``expected``,
    each sorted; shape mismatches read ``'key: file (..) vs model (..)'``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    return missing, unexpected, shapes


def mismatch_summary(missing: list, unexpected: list, shapes: list) -> str:
    """``'missing keys [...] (n in all); unexpected keys ...; shape mismatches ...'``."""
    return (
        f'missing keys {_head(missing)}; unexpected keys {_head(unexpected)}; '
        f'shape mismatches {_head(shapes)}'
    )
