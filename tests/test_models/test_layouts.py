"""Feature layouts (mmslora/models/layouts.py): tokens to (B, C, H, W) and back."""

import pytest
import torch

from mmslora.models.layouts import apply_in_layout


def test_tokens_that_do_not_fit_the_patch_grid():
    with pytest.raises(ValueError, match=r'\(1, 12, 8\) does not fit the patch grid 4x4'):
        apply_in_layout(lambda t: t, torch.randn(1, 12, 8), 'tokens', (), {}, grid=(4, 4))
    with pytest.raises(ValueError, match='does not fit the patch grid 4x4'):
        apply_in_layout(lambda t: t, torch.randn(1, 17, 8), 'nlc', (None, (4, 4)), {})


def test_tokens_layout_keeps_extra_tokens():
    x = torch.randn(2, 3 + 6, 8)
    out = apply_in_layout(lambda t: t * 2, x, 'tokens', (), {}, grid=(2, 3))
    assert torch.equal(out[:, :3], x[:, :3])
    assert torch.equal(out[:, 3:], 2 * x[:, 3:])


def test_patch_grid_of_a_patch_embedding_output():
    from mmslora.models.layouts import patch_grid

    tokens = torch.zeros(2, 12, 8)
    assert patch_grid((tokens, (3, 4))) == (3, 4)  # mm*'s PatchEmbed: (tokens, (H, W))
    assert patch_grid(torch.zeros(2, 8, 3, 4)) == (3, 4)  # a (B, C, H, W) map
    assert patch_grid(tokens) is None and patch_grid((tokens, torch.zeros(2, 12))) is None
