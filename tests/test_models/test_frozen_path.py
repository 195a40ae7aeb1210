"""The frozen fast path (mmslora.models.frozen_path) computes what the plain layers do.

Values are compared in float64, where folding BNs and skipping saved inputs change
nothing but rounding (1e-10); in float32 the outputs agree to 1e-5, while input
gradients can differ by ~1e-4 where a ReLU or max-pool tie flips (checked in float64).
"""

import copy

import pytest
import torch
import torch.nn as nn

from mmslora.models import MSLoRABackbone
from mmslora.models.frozen_path import FOLD_ATTR, enable_frozen_fast_path
from mmslora_testing import (
    HRNET_W18_TINY,
    TINY_SWIN,
    TINY_VIT_MMPRETRAIN,
    TINY_VIT_MMSEG,
    build_in_scope,
    flat,
    skip_unless_autocast,
    wrap,
)

BACKBONES = [
    ('mmdet-resnet18', 'mmdet', dict(type='mmdet.ResNet', depth=18, init_cfg=None)),
    ('mmseg-resnetv1c', 'mmseg', dict(type='mmseg.ResNetV1c', depth=18, init_cfg=None)),
    (
        'mmpretrain-resnet50',
        'mmpretrain',
        dict(type='mmpretrain.ResNet', depth=50, out_indices=(1, 3)),
    ),
    ('mmdet-hrnet', 'mmdet', dict(type='mmdet.HRNet', extra=HRNET_W18_TINY)),
    (
        'effnet-lite0',
        'mmpretrain',
        dict(type='mmslora.EfficientNetLite', out_indices=(2, 4, 7), init_cfg=None),
    ),
    ('mmdet-swin', 'mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN)),
    ('mmseg-swin', 'mmseg', dict(type='mmseg.SwinTransformer', **TINY_SWIN)),
    (
        'mmpretrain-swin',
        'mmpretrain',
        dict(
            type='mmpretrain.SwinTransformer',
            arch=dict(embed_dims=32, depths=(2, 2), num_heads=(1, 2)),
            img_size=64,
            window_size=4,
            out_indices=(1,),
        ),
    ),
    ('mmseg-vit', 'mmseg', dict(type='mmseg.VisionTransformer', **TINY_VIT_MMSEG)),
    (
        'mmpretrain-vit',
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
]
ADAPTER = dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4)


def _randomise(model: MSLoRABackbone, seed: int = 0) -> None:
    """Random BN statistics and non-zero adapters: nothing left at a value that hides a
    wrong fold or a missing gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                for t, (low, high) in (
                    (module.running_mean, (-0.3, 0.3)),
                    (module.running_var, (0.5, 2.0)),
                    (module.weight, (0.5, 1.5)),
                    (module.bias, (-0.3, 0.3)),
                ):
                    t.copy_(torch.rand(t.shape, generator=gen) * (high - low) + low)
        for param in model.adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def _pair(scope, cfg, **kwargs):
    """The same wrapped backbone with the fast path on and off, randomised alike."""
    models = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = build_in_scope(scope, wrap(cfg, adapter=ADAPTER, fast_path=fast, **kwargs))
        _randomise(model)
        models.append(model)
    return models


def _step(model, x, amp=None):
    """Outputs, input gradient and trainable-parameter gradients of one
    sum-of-squares backward (``amp``: forward under autocast to that dtype, on the
    input's device, backward after it)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        outputs = _forward(model, x)
    sum(o.float().pow(2).sum() for o in outputs).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return [o.detach() for o in outputs], x.grad, grads


def _forward(model, x):
    torch.manual_seed(2)  # the same drop-path draws for both models in training mode
    return flat(model(x))


def _assert_close(got, want, rtol):
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert (a - b).norm() <= rtol * b.norm() + 1e-30, float((a - b).norm() / b.norm())


def _input(cfg):
    size = (64, 64) if 'img_size' in cfg else (96, 128)
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('name, scope, cfg', BACKBONES, ids=[b[0] for b in BACKBONES])
def test_outputs_and_gradients_equal_plain_autograd(name, scope, cfg, device):
    fast, plain = (model.to(device) for model in _pair(scope, cfg))
    report = fast.fast_path_report
    assert report.convs  # every backbone here has at least a patch-embedding conv
    if 'resnet' in name or 'effnet' in name:
        assert report.folded and not report.unfolded
    x = _input(cfg).to(device)
    for mode in (True, False):  # train (norms stay in eval) and eval mode
        fast.train(mode), plain.train(mode)
        with torch.no_grad():
            _assert_close(_forward(fast, x), _forward(plain, x), 1e-5)
        _assert_close(_step(fast, x)[0], _step(plain, x)[0], 1e-5)
    fast64, plain64 = fast.double().train(), plain.double().train()
    got, want = _step(fast64, x.double()), _step(plain64, x.double())
    _assert_close(got[0], want[0], 1e-10)
    _assert_close([got[1]], [want[1]], 1e-10)
    assert got[2].keys() == want[2].keys() and got[2]
    _assert_close([got[2][k] for k in want[2]], list(want[2].values()), 1e-10)


def test_state_dict_and_keys_are_the_upstream_ones():
    fast, plain = _pair('mmdet', BACKBONES[0][2])
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)
    assert not any(FOLD_ATTR in dict(m.named_children()) for m in fast.modules())


def test_saves_far_less_for_backward():
    fast, plain = _pair('mmdet', BACKBONES[0][2])
    params = {p.data_ptr() for p in fast.parameters()} | {p.data_ptr() for p in plain.parameters()}

    def saved_bytes(model):
        total = [0]

        def pack(t):
            if t.data_ptr() not in params:
                total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(_input({}).requires_grad_(True))
        return total[0]

    fast.train(), plain.train()
    # what stays: the adapters' inputs and their D-channel maps, 1-byte ReLU masks
    assert saved_bytes(fast) < 0.6 * saved_bytes(plain)


def test_folds_follow_weight_loads_and_inference_cache():
    fast, plain = _pair('mmdet', BACKBONES[0][2])
    x = _input({})
    fast.eval(), plain.eval()
    with torch.no_grad():
        fast(x)  # fills the inference cache of the folded weights
        _randomise(plain, seed=5)
        fast.load_state_dict(plain.state_dict())
        _assert_close(flat(fast(x)), flat(plain(x)), 1e-5)
        # an in-place update (an optimizer step, init_weights) is seen too
        fast.backbone.layer1[0].bn1.running_var.mul_(3)
        plain.backbone.layer1[0].bn1.running_var.mul_(3)
        _assert_close(flat(fast(x)), flat(plain(x)), 1e-5)


@pytest.mark.parametrize('trainable', [('bias',), ('norm',)])
def test_trainable_backbone_parameters_get_plain_gradients(trainable, device):
    fast, plain = _pair('mmdet', BACKBONES[0][2], trainable=trainable)
    fast, plain = fast.to(device).double().train(), plain.to(device).double().train()
    x = _input({}).double().to(device)
    got, want = _step(fast, x), _step(plain, x)
    assert any(k.startswith('backbone.') for k in want[2])
    _assert_close([got[2][k] for k in want[2]], list(want[2].values()), 1e-10)


def test_with_cp_deepcopy_and_switching_off():
    fast, plain = _pair('mmdet', BACKBONES[0][2])
    for model in (fast, plain):
        for adapter in model.adapters.values():
            adapter.with_cp = True
    x = _input({}).double()
    fast, plain = fast.double().train(), plain.double().train()
    _assert_close(_step(fast, x)[2].values(), _step(plain, x)[2].values(), 1e-10)
    ema = copy.deepcopy(fast)  # EMA models and mean teachers copy the wrapper
    conv = ema.backbone.layer1[0].conv1
    assert conv._conv_forward.args[0] is conv
    assert conv.__dict__[FOLD_ATTR].bn is ema.backbone.layer1[0].bn1
    with torch.no_grad():
        fast.backbone.layer1[0].bn1.weight.mul_(2)  # the copy has its own weights
    _assert_close(_step(ema, x)[0], _step(plain, x)[0], 1e-10)
    fast.set_fast_path(False)
    assert fast.fast_path_report is None
    assert "_conv_forward" not in fast.backbone.layer1[0].conv1.__dict__
    fast.eval(), ema.eval()
    with torch.no_grad():
        ema.set_fast_path(False)
        assert torch.equal(flat(ema(x))[0], flat(plain.eval()(x))[0])  # bitwise again


def test_replaced_bn_turns_its_fold_off():
    """A BN replaced in its parent (SyncBatchNorm conversion) is not folded any more."""
    fast, plain = _pair('mmdet', BACKBONES[0][2])
    block = fast.backbone.layer1[0]
    old = block.bn1
    replacement = nn.BatchNorm2d(old.num_features)
    replacement.load_state_dict(old.state_dict())
    with torch.no_grad():
        replacement.running_mean.add_(1.0)
        plain.backbone.layer1[0].bn1.running_mean.add_(1.0)
    setattr(block, block.norm1_name, replacement)
    fast.eval(), plain.eval()
    with torch.no_grad():
        _assert_close(flat(fast(_input({}))), flat(plain(_input({}))), 1e-5)


class _SharedOutput(nn.Module):
    """conv -> bn, and the raw conv output used again: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y, self.bn2(self.conv2(x))


def test_a_fold_that_changes_the_output_is_refused():
    model = _SharedOutput().requires_grad_(False).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.bn.running_var.fill_(4.0)
        model.bn2.running_var.fill_(4.0)
        want = model(x)
    report = enable_frozen_fast_path(model, sample=x)
    assert report.folded == {'bn2': 'conv2'}
    assert 'bn' in report.unfolded and 'bn' in report.affine_norms
    with torch.no_grad():
        for a, b in zip(model(x), want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_casts_like_autocast(dtype, device):
    """Under autocast the fast path's outputs have the plain layers' dtypes, and outputs
    and gradients are near theirs."""
    skip_unless_autocast(device, dtype)
    fast, plain = (model.to(device).train() for model in _pair('mmdet', BACKBONES[0][2]))
    x = _input({}).to(device)
    got, want = _step(fast, x, amp=dtype), _step(plain, x, amp=dtype)
    assert [o.dtype for o in got[0]] == [o.dtype for o in want[0]]
    _assert_close([o.float() for o in got[0]], [o.float() for o in want[0]], 2e-2)
    _assert_close([g.float() for g in got[2].values()], [g.float() for g in want[2].values()], 5e-2)


def test_full_fine_tuning_has_no_fast_path():
    model = build_in_scope('mmdet', wrap(BACKBONES[0][2], adapter=None, freeze=False))
    assert model.fast_path_report is None
    with pytest.raises(ValueError, match='needs a frozen backbone'):
        model.set_fast_path(True)


@pytest.mark.parametrize(
    'in_ch, out_ch, kernel, stride, padding, dilation, groups, size',
    [
        (4, 8, 3, 1, 1, 1, 1, 10),
        (4, 8, 3, 2, 1, 1, 1, 11),
        (4, 8, 1, 2, 0, 1, 1, 7),
        (8, 8, 3, 1, 2, 2, 8, 9),
        (6, 9, 5, 3, 1, 1, 3, 13),
        (4, 4, 7, 2, 3, 1, 4, 12),
    ],
)
def test_frozen_conv_gradients_for_strides_dilations_groups(
    in_ch, out_ch, kernel, stride, padding, dilation, groups, size, device
):
    """The input gradient (a transposed convolution padded to the input's size) and the
    bias gradient equal autograd's for odd sizes, strides, dilations and groups."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups).double()
    conv.to(device).weight.requires_grad_(False)
    plain = copy.deepcopy(conv)
    enable_frozen_fast_path(conv)
    x = torch.randn(2, in_ch, size, size + 1, dtype=torch.float64).to(device)
    results = []
    for layer in (conv, plain):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        out.backward(torch.ones_like(out) + out.detach())
        results.append((out.detach(), xi.grad, layer.bias.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_conv_that_bypasses_conv_forward_is_not_folded():
    """mmcv's Conv2dAdaptivePadding calls F.conv2d itself: its BN must stay a BN."""
    from mmcv.cnn.bricks.conv2d_adaptive_padding import Conv2dAdaptivePadding

    model = (
        nn.Sequential(
            Conv2dAdaptivePadding(3, 8, 3, stride=2),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 1),
            nn.BatchNorm2d(8),
        )
        .requires_grad_(False)
        .eval()
    )
    with torch.no_grad():
        for bn in (model[1], model[3]):
            bn.running_var.fill_(4.0)
            bn.running_mean.fill_(0.5)
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        want = model(x)
    report = enable_frozen_fast_path(model, sample=x)
    assert report.folded == {'3': '2'} and '1' in report.affine_norms
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)


def test_float64_models_fold_too():
    """The sample inputs follow the parameters' dtype (a float64 model folds its BNs)."""
    model = build_in_scope('mmdet', BACKBONES[0][2]).double().requires_grad_(False)
    assert enable_frozen_fast_path(model).folded


@pytest.mark.parametrize('layout', ['channels_last', 'unbatched', 'tokens'])
def test_frozen_conv_on_channels_last_and_unbatched_inputs(layout, device):
    """Gradients equal autograd's and come out laid out as autograd lays them out (like
    the input), also where the gradient arrives in another layout: ``tokens`` reads a
    contiguous output as (B, HW, C) tokens, as PVT and Swin do, so its gradient arrives
    channels-last. (The input is not a leaf: a leaf's accumulated gradient is copied
    into the leaf's layout, which would hide the layout the layer returned.)"""
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    conv.to(device).weight.requires_grad_(False)
    plain = copy.deepcopy(conv)
    enable_frozen_fast_path(conv)
    if layout == 'unbatched':
        x = torch.randn(4, 9, 9, dtype=torch.float64, device=device)
    else:
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, device=device)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    results = []
    for layer in (conv, plain):
        xi = x.clone()
        out = layer(xi)
        if layout == 'tokens':  # a (B, HW, C) gradient, as layers on tokens return
            out = out.flatten(2).transpose(1, 2)
        results.append(torch.autograd.grad(out, (xi, layer.bias), out.detach().contiguous()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert got.stride() == want.stride()


def saved_list_hook(saved):
    """A pack hook that appends every tensor autograd saves to ``saved``."""

    def pack(t):
        saved.append(t)
        return t

    return pack


def test_frozen_linear_keeps_no_input_in_torch_itself():
    """Why the fast path leaves Linear alone: autograd keeps a Linear's input only for
    its weight's gradient (a frozen convolution keeps it anyway)."""
    for layer, x in (
        (nn.Linear(8, 8), torch.randn(4, 8)),
        (nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)),
    ):
        layer.requires_grad_(False)
        x.requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(saved_list_hook(saved), lambda t: t):
            layer(x)
        keeps_input = any(t.data_ptr() == x.data_ptr() for t in saved)
        assert keeps_input == isinstance(layer, nn.Conv2d)
