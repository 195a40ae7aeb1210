"""Every backbone registered in mmdet, mmseg and mmpretrain, wrapped with no ``blocks``
argument and the recipe's adapter without a width (one table, as timm tests every
model): adapters inserted by a preset or the block finder within 5% of the backbone,
equal to the plain backbone at init, backbone bitwise frozen after two training steps,
adapters trained (tools/analysis_tools/backbone_coverage.py)."""

import pytest

from mmslora.models.wrapper import DEFAULT_BUDGET
from mmslora_testing import load_tool

coverage = load_tool('tools/analysis_tools/backbone_coverage.py')
NAMES = [name for name, _ in coverage.registered_backbones()]

#: registered classes that do not build here, and why (not counted in the coverage)
NOT_BUILDING = {
    'mmseg.DeconvModule': 'a decoder part of UNet, not a backbone',
    'mmseg.InterpConv': 'a decoder part of UNet, not a backbone',
    'mmseg.TIMMBackbone': 'needs the timm package',
    'mmpretrain.TIMMBackbone': 'needs the timm package',
    'mmseg.VPD': 'needs diffusers and a Stable Diffusion checkpoint',
}


@pytest.mark.parametrize('name', NAMES)
def test_wraps_by_itself(name, one_thread):
    result = coverage.check_backbone(name)
    if name in NOT_BUILDING:
        assert result.status == 'no build', f'{name} builds now: test it'
    elif name in coverage.EXCEPTIONS:
        assert result.status == 'exception', f'{name} wraps now: drop it from EXCEPTIONS'
    else:
        assert result.status == 'wrapped', result.detail
        assert result.blocks > 0
        if name in coverage.OVER_BUDGET:
            assert result.share > DEFAULT_BUDGET and result.width == 1, (
                f'{name} fits {DEFAULT_BUDGET:.0%} now: drop it from OVER_BUDGET'
            )
        else:
            assert 0 < result.share <= DEFAULT_BUDGET, (result.share, result.width)


def test_at_least_95_percent_of_the_backbones_that_build_wrap_by_themselves():
    built = [n for n in NAMES if n not in NOT_BUILDING]
    assert set(coverage.EXCEPTIONS) <= set(built)
    assert 1 - len(coverage.EXCEPTIONS) / len(built) >= 0.95
