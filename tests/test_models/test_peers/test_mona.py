"""Mona (mmslora/models/peers/mona.py)."""

import torch
import torch.nn as nn

from mmslora.models.peers import MonaAdapter


def test_mona_identity_at_init_and_formula():
    torch.manual_seed(0)
    adapter = MonaAdapter(channels=16, hidden_dim=8).eval()
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(adapter(x), x)
    assert torch.all(adapter.gamma == 1e-6) and torch.all(adapter.gamma_x == 1)
    nn.init.normal_(adapter.up.weight)
    f = x.permute(0, 2, 3, 1)
    t = adapter.down(
        nn.functional.layer_norm(f, (16,), adapter.norm.weight, adapter.norm.bias) * adapter.gamma
        + f * adapter.gamma_x
    ).permute(0, 3, 1, 2)
    convs = adapter.filter.convs
    t = t + (convs[0](t) + convs[1](t) + convs[2](t)) / 3
    t = t + adapter.filter.projector(t)
    expected = x + adapter.up(nn.functional.gelu(t.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    torch.testing.assert_close(adapter(x), expected)
    d, c = 8, 16
    n_params = 2 * c + 2 * c + (c * d + d) + (9 + 25 + 49 + 3) * d + (d * d + d) + (d * c + c)
    assert sum(p.numel() for p in adapter.parameters()) == n_params
