"""Which modules are blocks (mmslora/models/block_presets.py): presets, user patterns,
and the errors when nothing matches."""

import pytest
import torch

from mmslora_testing import build_in_scope, wrap


def test_custom_block_pattern_for_any_backbone():
    model = build_in_scope(
        'mmpretrain',
        wrap(
            dict(type='mmpretrain.MobileNetV2', widen_factor=0.5, out_indices=(7,), init_cfg=None),
            blocks=dict(pattern=r'layer[1-7]', layout='nchw'),
            adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4),
        ),
    )
    assert sorted(model.adapters) == [f'layer{i}' for i in range(1, 8)]
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    assert model(x)[0].shape[1] == 1280  # MobileNetV2 keeps 1280 channels below width 1


def test_no_block_matched_lists_patterns_and_candidates():
    with pytest.raises(
        ValueError,
        match=r"matched the patterns 'nothing\\\.here'.*"
        r"candidate module names: \['layer1'",
    ):
        build_in_scope(
            'mmdet',
            wrap(
                dict(type='mmdet.ResNet', depth=18, init_cfg=None),
                blocks=dict(pattern=r'nothing\.here'),
            ),
        )


@pytest.mark.parametrize(
    'blocks, error, match',
    [
        (
            dict(pattern=r'layer\d', layout='tokens/x'),
            ValueError,
            r"unknown layout 'tokens/x'; use one of .* or 'tokens/<stride>'",
        ),
        (dict(pattern=r'layer\d', layout='nlc/16'), ValueError, "unknown layout 'nlc/16'"),
        ('everything', TypeError, r"blocks must be None, 'auto' or a dict"),
    ],
)
def test_bad_block_specs_name_the_fix(blocks, error, match):
    with pytest.raises(error, match=match):
        build_in_scope(
            'mmdet', wrap(dict(type='mmdet.ResNet', depth=18, init_cfg=None), blocks=blocks)
        )


def test_the_chain_says_which_resolver_matched():
    from mmslora.models.block_presets import find_blocks

    plain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
    )  # no preset fits
    resnet = build_in_scope('mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None))
    preset = find_blocks(resnet)
    assert preset.resolver == 'preset' and preset['layer4.1'] == ('nchw', 512)
    discovered = find_blocks(resnet, 'auto')
    assert discovered.resolver == 'discovery' and dict(discovered) == dict(preset)
    assert find_blocks(plain).resolver == 'discovery'  # no preset: the next resolver
    pattern = find_blocks(resnet, dict(pattern=r'layer1\.0'))
    assert pattern.resolver == 'pattern' and dict(pattern) == {'layer1.0': ('nchw', None)}
