"""The bottleneck adapter (mmslora/models/peers/bottleneck.py)."""

import torch
import torch.nn as nn

from mmslora.models.peers import BottleneckAdapter


def test_bottleneck_adapter_identity_at_init_and_formula():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(channels=16, hidden_dim=4, scale=0.5)
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(adapter(x), x)
    nn.init.normal_(adapter.up.weight)
    nn.init.normal_(adapter.up.bias)
    down = torch.relu(
        torch.einsum('bchw,dc->bdhw', x, adapter.down.weight.flatten(1))
        + adapter.down.bias[:, None, None]
    )
    up = (
        torch.einsum('bdhw,cd->bchw', down, adapter.up.weight.flatten(1))
        + adapter.up.bias[:, None, None]
    )
    torch.testing.assert_close(adapter(x), x + 0.5 * up)
    assert sum(p.numel() for p in adapter.parameters()) == 16 * 4 + 4 + 4 * 16 + 16
