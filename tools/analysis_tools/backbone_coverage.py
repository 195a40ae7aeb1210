"""Which registered backbones of mmdet, mmseg and mmpretrain MSLoRABackbone wraps by itself.

    python tools/analysis_tools/backbone_coverage.py [--only mmdet.ResNet ...] [--out FILE.md]

For every backbone class registered in the three toolboxes' ``MODELS`` (built with the
small arguments of :data:`BUILD_ARGS` where its defaults are missing or too large), it
wraps the backbone with no ``blocks`` argument and the recipe's adapter (no width:
the class default, or the width fitted to 5% of the backbone) and checks, on CPU:
adapters were inserted (by a preset or the block finder) within 5% of the backbone's
parameters (the share and width are reported), the wrapped model equals the plain
backbone at init (to float rounding in float32: the frozen fast path folds BNs; to
1e-9 in float64, also the input gradient the fast path passes back against plain
autograd, for the backbones that run in float64), two SGD steps leave the backbone
bitwise frozen, and the adapters train (their zero-initialised parameters move). It prints a markdown table;
``tests/test_models/test_backbone_coverage.py`` runs the same check per backbone.
"""

import argparse
import copy
import inspect
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import mmslora  # noqa: F401  (registers mmslora.*)
from mmslora.models import MSLoRABackbone, count_parameters
from mmslora.models.discovery import working_input

#: the adapter of ``configs/_base_/mslora.py``: no width, so the default budget applies
ADAPTER = dict(type='mmslora.MSLoRAAdapter', groups=8)


def _hrnet_extra(blocks: str) -> dict:
    def stage(n):
        return dict(
            num_modules=1,
            num_branches=n,
            block=blocks,
            num_blocks=(1,) * n,
            num_channels=(18, 36, 72, 144)[:n],
        )

    return dict(
        stage1=dict(
            num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1,), num_channels=(16,)
        ),
        stage2=stage(2),
        stage3=stage(3),
        stage4=stage(4),
    )


_STDC = dict(
    stdc_type='STDCNet1',
    in_channels=3,
    channels=(32, 64, 256, 512, 1024),
    bottleneck_type='cat',
    num_convs=4,
    norm_cfg=dict(type='BN'),
    act_cfg=dict(type='ReLU'),
    with_final_conv=False,
)
_TINY_VIT = dict(
    arch=dict(embed_dims=64, num_layers=2, num_heads=2, feedforward_channels=128),
    img_size=64,
    patch_size=16,
)
_TINY_VIT_MMSEG = dict(img_size=64, patch_size=16, embed_dims=64, num_layers=2, num_heads=2)

#: constructor arguments where the defaults are missing or large (scope.Class -> kwargs)
BUILD_ARGS: Dict[str, dict] = {
    'mmdet.DetectoRS_ResNeXt': dict(depth=50, groups=32, base_width=4),
    'mmdet.DetectoRS_ResNet': dict(depth=50),
    'mmdet.HRNet': dict(extra=_hrnet_extra('BASIC')),
    'mmdet.RegNet': dict(arch='regnetx_400mf'),
    'mmdet.Res2Net': dict(depth=50),
    'mmdet.ResNeSt': dict(depth=50),
    'mmdet.ResNeXt': dict(depth=50),
    'mmdet.ResNet': dict(depth=18),
    'mmdet.ResNetV1d': dict(depth=18),
    'mmdet.SSDVGG': dict(depth=16),
    'mmdet.SwinTransformer': dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    # its default init_cfg (Kaiming on Conv2d) leaves TridentConv's weight as torch.empty
    # left it (NaN at times); initialise it like the other convolutions
    'mmdet.TridentResNet': dict(
        depth=50,
        num_branch=3,
        test_branch_idx=1,
        trident_dilations=(1, 2, 3),
        out_indices=(2,),
        strides=(1, 2, 2),
        dilations=(1, 1, 1),
        num_stages=3,
        init_cfg=[
            dict(type='Kaiming', layer=['Conv2d', 'TridentConv']),
            dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']),
        ],
    ),
    'mmseg.BEiT': dict(img_size=64, embed_dims=64, num_layers=2, num_heads=2),
    'mmseg.BiSeNetV1': dict(backbone_cfg=dict(type='ResNet', depth=18)),
    'mmseg.HRNet': dict(extra=_hrnet_extra('BASIC')),
    'mmseg.ICNet': dict(
        backbone_cfg=dict(
            type='ResNetV1c',
            depth=18,
            in_channels=3,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            dilations=(1, 1, 2, 4),
            strides=(1, 2, 1, 1),
        ),
        in_channels=3,
        layer_channels=(128, 512),
    ),
    'mmseg.MAE': dict(img_size=64, embed_dims=64, num_layers=2, num_heads=2),
    'mmseg.ResNeSt': dict(depth=50),
    'mmseg.ResNeXt': dict(depth=50),
    'mmseg.ResNet': dict(depth=18),
    'mmseg.ResNetV1c': dict(depth=18),
    'mmseg.ResNetV1d': dict(depth=18),
    'mmseg.STDCContextPathNet': dict(
        backbone_cfg=dict(type='STDCNet', **_STDC),
        last_in_channels=(1024, 512),
        ffm_cfg=dict(in_channels=384, out_channels=256, scale_factor=4),
    ),
    'mmseg.STDCNet': _STDC,
    'mmseg.SwinTransformer': dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    'mmseg.UNet': dict(upsample_cfg=dict(type='mmseg.InterpConv'), base_channels=16),
    'mmseg.VisionTransformer': _TINY_VIT_MMSEG,
    'mmpretrain.BEiTViT': dict(_TINY_VIT, arch=dict(_TINY_VIT['arch'])),
    'mmpretrain.CSPDarkNet': dict(depth=53),
    'mmpretrain.CSPResNeXt': dict(depth=50),
    'mmpretrain.CSPResNet': dict(depth=50),
    'mmpretrain.ConvMixer': dict(arch='768/32'),
    'mmpretrain.DeiT3': _TINY_VIT,
    'mmpretrain.DistilledVisionTransformer': _TINY_VIT,
    'mmpretrain.LeViT': dict(arch='128s'),
    'mmpretrain.MobileOne': dict(arch='s0'),
    'mmpretrain.PCPVT': dict(arch='small'),
    'mmpretrain.PyramidVig': dict(arch='tiny'),
    'mmpretrain.RegNet': dict(arch='regnetx_400mf'),
    'mmpretrain.RepLKNet': dict(arch='31B'),
    'mmpretrain.RepMLPNet': dict(arch='B'),
    'mmpretrain.RepVGG': dict(arch='A0'),
    'mmpretrain.Res2Net': dict(depth=50),
    'mmpretrain.ResNeSt': dict(depth=50),
    'mmpretrain.ResNeXt': dict(depth=50),
    'mmpretrain.ResNet': dict(depth=18),
    'mmpretrain.ResNetV1c': dict(depth=18),
    'mmpretrain.ResNetV1d': dict(depth=18),
    'mmpretrain.ResNet_CIFAR': dict(depth=18),
    'mmpretrain.RevVisionTransformer': _TINY_VIT,
    'mmpretrain.SEResNeXt': dict(depth=50),
    'mmpretrain.SEResNet': dict(depth=50),
    'mmpretrain.SVT': dict(arch='small'),
    'mmpretrain.SparseResNet': dict(depth=18),
    'mmpretrain.SwinTransformer': dict(
        arch=dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    ),
    'mmpretrain.VGG': dict(depth=11),
    'mmpretrain.Vig': dict(arch='tiny'),
    'mmpretrain.VisionTransformer': _TINY_VIT,
}

#: classes registered among the backbones that MSLoRABackbone cannot wrap, with why
EXCEPTIONS: Dict[str, str] = {
    'mmpretrain.RevVisionTransformer': 'reversible layers recompute their activations in a custom backward that does '
    'not run forward hooks, so no gradient reaches hooked adapters',
    'mmpretrain.SparseConvNeXt': 'a SparK pre-training backbone: its forward needs the mask the SparK algorithm '
    'sets, so it cannot run on an image alone',
    'mmpretrain.SparseResNet': 'a SparK pre-training backbone: its forward needs the mask the SparK algorithm '
    'sets, so it cannot run on an image alone',
}


#: backbones whose adapters exceed 5% even at the narrowest width (the wrapper builds that
#: width and warns), with why
OVER_BUDGET: Dict[str, str] = {
    'mmpretrain.ShuffleNetV1': 'MSLoRA on each of its 16 blocks (up to 960 channels) keeps a few parameters per '
    'channel at any width: 5.1% of its 0.9 M parameters at hidden_dim=1',
}


@dataclass
class Coverage:
    """One backbone's result: ``status`` is 'wrapped', 'exception' or 'no build'."""

    backbone: str
    status: str
    blocks: int = 0
    layouts: str = ''
    share: float = 0.0  # the adapters' parameters / the backbone's
    width: Optional[int] = None  # the adapter width built (hidden_dim)
    source: str = ''
    detail: str = ''
    seconds: float = 0.0


def registered_backbones() -> List[Tuple[str, type]]:
    """``('scope.Class', class)`` for every class registered in the toolboxes' MODELS
    from their ``models.backbones`` packages, sorted."""
    import mmdet.models  # noqa: F401  (registers)
    import mmpretrain.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmdet.registry import MODELS as MMDET
    from mmpretrain.registry import MODELS as MMPRETRAIN
    from mmseg.registry import MODELS as MMSEG

    found = []
    for scope, registry in (('mmdet', MMDET), ('mmseg', MMSEG), ('mmpretrain', MMPRETRAIN)):
        for name, cls in registry.module_dict.items():
            if inspect.isclass(cls) and '.models.backbones' in cls.__module__:
                found.append((f'{scope}.{name}', cls))
    return sorted(found)


#: wrapped vs plain at init in float32 (the rounding of folded BNs), and in float64
#: (outputs and input gradients: the same math). Input gradients are compared in float64
#: only: at random init many backbones are so ill-conditioned (XCiT's input gradient
#: moves 8x under 1e-6 relative weight noise) that float32 rounding decides them.
OUTPUT_RTOL, EXACT_RTOL = 1e-4, 1e-9


def _outputs(model, x) -> List[torch.Tensor]:
    def flat(value):
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (tuple, list)):
            return [t for item in value for t in flat(item)]
        return []

    return flat(model(x))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, NaN matching NaN (a weight left uninitialised upstream must not
    make identical models look different)."""
    return (
        a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())
        if a.is_floating_point()
        else torch.equal(a, b)
    )


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """Equal to ``rtol`` of ``b``'s norm (NaN matching NaN); non-float tensors bitwise."""
    if a.shape != b.shape or not a.is_floating_point():
        return _same(a, b)
    a, b = a.double().nan_to_num(), b.double().nan_to_num()
    return bool((a - b).norm() <= rtol * b.norm() + 1e-12)


def _input_gradient(model, x) -> Optional[torch.Tensor]:
    """d(sum of squares of the float outputs)/dx in eval mode, or None (no path)."""
    x = x.clone().requires_grad_(True)
    outputs = [t for t in _outputs(model, x) if t.is_floating_point() and t.requires_grad]
    if not outputs:
        return None
    return torch.autograd.grad(sum(t.float().pow(2).mean() for t in outputs), x, allow_unused=True)[
        0
    ]


def _exact_check(model, plain, x) -> Optional[str]:
    """Why the wrapped model differs from the plain backbone in float64 (outputs, and
    the input gradient the frozen fast path passes back), or None. A backbone that does
    not run in float64 (an op or a buffer fixed to float32) is not checked."""
    try:
        model64, plain64 = copy.deepcopy(model).double(), copy.deepcopy(plain).double()
        x64 = x.double()
        with torch.no_grad():
            got, want = _outputs(model64, x64), _outputs(plain64, x64)
        grads = _input_gradient(model64, x64), _input_gradient(plain64, x64)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    if any(not _close(a, b, EXACT_RTOL) for a, b in zip(got, want)):
        return 'not equal to the plain backbone in float64'
    if (grads[0] is None) != (grads[1] is None) or (
        grads[1] is not None and not _close(*grads, EXACT_RTOL)
    ):
        return "input gradient differs from the plain backbone's (float64)"
    return None


def check_backbone(name: str, build_args: Optional[dict] = None) -> Coverage:
    """Wrap ``name`` ('scope.Class') and run the checks of the module docstring."""
    from mmengine.registry import DefaultScope

    start = time.time()
    scope = name.split('.', 1)[0]
    cfg = dict(type=name, **(BUILD_ARGS.get(name, {}) if build_args is None else build_args))
    with DefaultScope.overwrite_default_scope(scope):
        try:
            from mmengine.registry import MODELS

            torch.manual_seed(0)
            plain = MODELS.build(dict(cfg))
        except Exception as err:  # noqa: BLE001  (reported, not raised)
            return Coverage(name, 'no build', detail=f'{type(err).__name__}: {err}'[:160])
        try:
            torch.manual_seed(0)
            model = MSLoRABackbone(backbone=dict(cfg), adapter=ADAPTER)
        except Exception as err:  # noqa: BLE001
            return Coverage(
                name,
                'exception',
                detail=f'{type(err).__name__}: {err}'[:300],
                seconds=time.time() - start,
            )
    try:
        return _check_wrapped(name, model, plain, start)
    except Exception as err:  # noqa: BLE001  (reported, not raised)
        return Coverage(
            name,
            'exception',
            detail=f'{type(err).__name__}: {err}'[:300],
            seconds=time.time() - start,
        )


def _check_wrapped(name: str, model: MSLoRABackbone, plain, start: float) -> Coverage:
    torch.manual_seed(1)
    model.init_weights()
    try:
        plain.load_state_dict(model.backbone.state_dict())
    except RuntimeError:
        # a class that leaves buffers out of its state dict (SwinV2's position tables):
        # built from seed 0 and initialised from seed 1 like the wrapped one
        torch.manual_seed(1)
        plain.init_weights()
    plain_state = plain.state_dict()
    if any(not _same(v, plain_state[k]) for k, v in model.backbone.state_dict().items()):
        return Coverage(name, 'exception', detail='the wrapped backbone was built differently')
    plain.requires_grad_(False)
    x = working_input(plain)
    if x is None:
        return Coverage(name, 'exception', detail='takes none of the sample inputs')
    model.eval()
    plain.eval()
    with torch.no_grad():
        got, want = _outputs(model, x), _outputs(plain, x)
    # the frozen fast path folds BNs (products reordered): equal to float rounding
    if not got or any(not _close(a, b, OUTPUT_RTOL) for a, b in zip(got, want)):
        return Coverage(name, 'exception', detail='not equal to the plain backbone at init')
    exact = _exact_check(model, plain, x)
    if exact:
        return Coverage(name, 'exception', detail=exact)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    zero = {f'{key}.{p}': a for key, a in model.adapters.items() for p in a.zero_init}
    before = {k: v.detach().clone() for k, v in model.adapters.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        loss = sum(t.float().pow(2).mean() for t in _outputs(model, x) if t.is_floating_point())
        loss.backward()
        opt.step()
    after = model.backbone.state_dict()
    if any(not _same(v, after[k]) for k, v in frozen.items()):
        return Coverage(name, 'exception', detail='the frozen backbone changed in training')
    state = model.adapters.state_dict()
    moved = sum(not torch.equal(state[k], before[k]) for k in zero)
    if moved == 0:
        return Coverage(name, 'exception', detail='no adapter trained')
    layouts = sorted(set(model.block_layouts.values()))
    return Coverage(
        name,
        'wrapped',
        blocks=len(model.adapters),
        layouts='/'.join(layouts),
        share=count_parameters(model).backbone_share,
        width=model.adapter_cfg.get('hidden_dim'),
        detail=f'{moved}/{len(zero)} adapters trained',
        seconds=time.time() - start,
    )


def markdown(rows: List[Coverage]) -> str:
    built = [r for r in rows if r.status != 'no build']
    wrapped = [r for r in built if r.status == 'wrapped']
    lines = [
        f'{len(wrapped)} of {len(built)} backbones that build on CPU wrap by themselves '
        f'({100 * len(wrapped) / max(len(built), 1):.0f}%); {len(rows) - len(built)} '
        'registered classes did not build with the arguments tried.',
        '',
        '| backbone | result | blocks | layout | share | width | detail |',
        '|---|---|---:|---|---:|---:|---|',
    ]
    lines += [
        f'| {r.backbone} | {r.status} | {r.blocks or ""} | {r.layouts} | '
        f'{f"{r.share:.2%}" if r.blocks else ""} | {r.width or ""} | '
        f'{r.detail.replace("|", "/")} |'
        for r in rows
    ]
    return '\n'.join(lines)


def main(argv=None) -> List[Coverage]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--only', nargs='+', help='scope.Class names to check')
    parser.add_argument('--out', help='also write the markdown table here')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from mmengine.logging import MMLogger

    MMLogger.get_instance('backbone_coverage', log_level='WARNING')  # no init dumps
    names = [n for n, _ in registered_backbones() if not args.only or n in args.only]
    rows = []
    for name in names:
        rows.append(check_backbone(name))
        print(
            f'{name}: {rows[-1].status} {rows[-1].blocks} {rows[-1].share:.2%} '
            f'{rows[-1].detail} ({rows[-1].seconds:.1f} s)',
            flush=True,
        )
    table = markdown(rows)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return rows


if __name__ == '__main__':
    main()
