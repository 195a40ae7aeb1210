"""The block finder (mmslora/models/discovery.py): layouts read off one dry forward that
leaves the backbone and the global random state as they were."""

import pytest
import torch
import torch.nn as nn

from mmslora.models.discovery import discover_blocks, preset_channels
from mmslora_testing import build_in_scope


class NHWCBlock(nn.Module):
    """A residual block that keeps its map channels-last, (B, H, W, C)."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class NHWCNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.blocks = nn.Sequential(NHWCBlock(8), NHWCBlock(8))

    def forward(self, x):
        return self.blocks(self.stem(x).permute(0, 2, 3, 1))


class TokenNet(nn.Module):
    """Tokens with a cls token and no patch-embedding module that states the grid."""

    def __init__(self, c=16):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 16, stride=16)
        self.cls = nn.Parameter(torch.zeros(1, 1, c))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)) for _ in range(2)
        )

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for layer in self.layers:
            t = t + layer(t)
        return t


def test_resnet_blocks_and_nothing_inside_them():
    model = build_in_scope('mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None))
    found = discover_blocks(model)
    assert sorted(found.blocks) == [f'layer{i}.{j}' for i in range(1, 5) for j in range(2)]
    assert found.blocks['layer3.1'] == ('nchw', 256)


def test_channels_last_blocks_and_tokens_at_a_stride():
    assert discover_blocks(NHWCNet()).blocks == {'blocks.0': ('nhwc', 8), 'blocks.1': ('nhwc', 8)}
    assert discover_blocks(TokenNet()).blocks == {
        'layers.0': ('tokens/16', 16),
        'layers.1': ('tokens/16', 16),
    }


def test_a_plain_stack_gets_its_layers():
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
    )
    assert discover_blocks(plain).blocks == {'0': ('nchw', 8), '2': ('nchw', 8), '5': ('nchw', 16)}


def test_dry_forward_leaves_state_and_random_stream_alone():
    model = build_in_scope('mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None))
    model.train()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    discover_blocks(model)
    drawn = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(3))  # the global generator was not used
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN stats
    assert [m.training for m in model.modules()] == modes and any(modes)


def test_preset_layouts_that_do_not_fit_the_forward_are_refused():
    model = TokenNet()
    assert preset_channels(model, {'layers.0': 'nchw'}) is None  # tokens, not a map
    assert preset_channels(model, {'layers.0': 'nlc'}) == {'layers.0': 16}


def test_a_backbone_that_takes_no_sample_input_is_named():
    class Picky(nn.Module):
        def forward(self, x):
            raise RuntimeError('needs a mask')

    with pytest.raises(ValueError, match='a dry forward of Picky failed at every input size'):
        discover_blocks(Picky())


def test_dry_run_is_eval_without_autograd_and_restores_modes_after_an_error():
    from mmslora.models.dry_run import dry_run

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()  # a mixed state comes back as it was
    modes = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match='inside'):
        with dry_run(model):
            assert not any(m.training for m in model.modules())
            assert not model(torch.randn(3, 2)).requires_grad
            raise RuntimeError('inside')
    assert [m.training for m in model.modules()] == modes
