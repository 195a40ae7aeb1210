"""What ``'tokens'`` blocks read during one forward of the wrapper: the patch grid and
the input size (:func:`~mmslora.models.layouts.apply_in_layout`)."""

from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor

from .layouts import patch_grid

__all__ = ['TokenGrid']


class TokenGrid:
    """The patch grid of the current forward, recorded by a forward hook on the patch
    embedding, and the (H, W) of the backbone's input.

    Attributes:
        grid (tuple | None): (H, W) of the patch grid (:func:`~.layouts.patch_grid` of
            the patch embedding's output), None before the embedding has run.
        input_hw (tuple | None): (H, W) of the input tensor, for ``'tokens/<s>'``.
    """

    def __init__(self) -> None:
        self.grid: Optional[tuple] = None
        self.input_hw: Optional[Tuple[int, int]] = None
        self._handle = None

    def start(self, inputs) -> None:
        """Forget the last forward's grid; note the (H, W) of ``inputs`` (a (..., H, W)
        tensor; anything else gives None)."""
        self.grid = None
        self.input_hw = tuple(inputs.shape[-2:]) if isinstance(inputs, Tensor) else None

    @property
    def attached(self) -> bool:
        """Whether a patch embedding's hook records the grid."""
        return self._handle is not None

    def attach(self, embedding: nn.Module) -> None:
        """Record the grid from every forward of ``embedding`` (once; a second call keeps
        the first hook)."""
        if self._handle is None:
            self._handle = embedding.register_forward_hook(self._record)

    def detach(self) -> None:
        """Remove the hook; the grid stays None from the next forward on."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, module: nn.Module, args, output) -> None:
        self.grid = patch_grid(output)
