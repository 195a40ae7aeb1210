"""MSLoRAAdapter's ablation and initialisation switches (combine, channel_attention,
spatial_attention, kernel_sizes, init, trans_stride): each starts at F_hat = F
exactly, its forward (fused or layer by layer) equals F + residual(F) in values and
gradients, it builds only its modules, and the zero start survives an init_cfg."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmslora.models import MSLoRAAdapter, MSLoRABackbone, record_reweighting
from mmslora.models.adapter import fused_mslora, nearest_upsample
from mmslora_testing import RESNET18

C, D, G = 16, 8, 2
VARIANTS = {
    'default': {},
    'sum': dict(combine='sum'),
    'proj': dict(combine='proj'),
    'trans': dict(combine='trans'),
    'no-channel-attn': dict(channel_attention=False),
    'no-spatial-attn': dict(spatial_attention=False),
    'single-kernel': dict(kernel_sizes=(3,)),
    'zero-scale': dict(init='zero_scale'),
    'gate-bias': dict(init='gate_bias'),
    'stride-2': dict(trans_stride=2),
    'stride-3': dict(trans_stride=3),
    'no-attn-single-kernel-stride-2': dict(
        channel_attention=False, spatial_attention=False, kernel_sizes=(3,), trans_stride=2
    ),
    'zero-scale-stride-2-no-spatial-attn': dict(
        init='zero_scale', trans_stride=2, spatial_attention=False
    ),
    'sum-zero-scale-stride-2': dict(combine='sum', init='zero_scale', trans_stride=2),
    'trans-no-channel-attn-stride-2': dict(
        combine='trans', channel_attention=False, trans_stride=2
    ),
    'trans-zero-scale': dict(combine='trans', init='zero_scale'),
    'proj-zero-scale': dict(combine='proj', init='zero_scale'),
}
parametrize_variants = pytest.mark.parametrize(
    'kwargs', list(VARIANTS.values()), ids=list(VARIANTS)
)


def build(kwargs, seed=0, **extra):
    torch.manual_seed(seed)
    return MSLoRAAdapter(channels=C, hidden_dim=D, groups=G, **kwargs, **extra)


def move_off_zero_start(adapter, std=0.5):
    params = dict(adapter.named_parameters())
    with torch.no_grad():
        for name in adapter.zero_init:
            params[name].normal_(std=std)


def inputs(seed=1, size=(7, 5)):  # odd sizes: trans_stride's ceil mode and crop
    torch.manual_seed(seed)
    return torch.randn(2, C, *size)


@parametrize_variants
def test_identity_at_step_0(kwargs):
    adapter = build(kwargs)
    x = inputs()
    for training in (True, False):
        adapter.train(training)
        assert torch.equal(adapter(x), x)
        with torch.no_grad():
            assert torch.equal(adapter(x), x)
            assert not adapter.residual(x).any()


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels-last'])
@parametrize_variants
def test_forward_equals_layer_by_layer(kwargs, channels_last, device):
    """Values with and without autograd, in train and eval mode, and the gradients
    w.r.t. the input and every parameter, against ``F + residual(F)``; for
    combine='product' :func:`fused_mslora` itself too."""
    adapter = build(kwargs)
    move_off_zero_start(adapter)
    adapter.to(device)
    x = inputs().to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = [x] + list(adapter.parameters())
    paths = [adapter.forward]
    if adapter.combine == 'product':
        paths.append(lambda t: fused_mslora(adapter, t))
    for training in (True, False):
        adapter.train(training)
        with torch.no_grad():
            reference = x + adapter.residual(x)
            assert not torch.equal(reference, x)  # away from the zero start
            for path in paths:
                torch.testing.assert_close(path(x), reference, rtol=1e-5, atol=1e-5)
        want = torch.autograd.grad((x + adapter.residual(x)).pow(2).sum(), params)
        for path in paths:
            out = path(x)
            torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
            got = torch.autograd.grad(out.pow(2).sum(), params)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def expected_parameters(
    combine='product',
    channel_attention=True,
    spatial_attention=True,
    kernel_sizes=(3, 5, 7),
    init='zero_up',
    trans_stride=1,
):
    """Parameter count (C, D, G as above, reduction 4, spatial kernel 7) and the
    top-level module names built."""
    proj = 2 * C * D // G
    squeezed = D // 4
    trans = (
        C * D // G
        + 2 * D
        + sum(k * k + 1 for k in kernel_sizes) * D
        + (D * C // G + C)
        + channel_attention * (2 * D * squeezed + squeezed + D)
        + spatial_attention * (2 * 49 + 1)
    )
    count = (proj if combine != 'trans' else 0) + (trans if combine != 'proj' else 0)
    count += C if init == 'zero_scale' else 0
    return count


@parametrize_variants
def test_parameters_are_those_of_the_modules_built(kwargs):
    adapter = build(kwargs)
    names = [n for n, _ in adapter.named_parameters()]
    assert sum(p.numel() for p in adapter.parameters()) == expected_parameters(**kwargs)
    combine = kwargs.get('combine', 'product')
    assert any(n.startswith('proj.') for n in names) == (combine != 'trans')
    assert any(n.startswith('trans.') for n in names) == (combine != 'proj')
    assert ('scale' in names) == (kwargs.get('init') == 'zero_scale')
    if combine != 'proj':
        assert any('channel_attn' in n for n in names) == kwargs.get('channel_attention', True)
        assert any('spatial_attn' in n for n in names) == kwargs.get('spatial_attention', True)
    assert set(adapter.zero_init) <= set(names)
    assert type(adapter).zero_init == ('proj.up.weight',)  # the class keeps the defaults'


@pytest.mark.parametrize(
    'kwargs, zero_init',
    [
        ({}, ('proj.up.weight',)),
        (dict(combine='sum'), ('proj.up.weight', 'trans.expand.weight', 'trans.expand.bias')),
        (dict(combine='proj'), ('proj.up.weight',)),
        (dict(combine='trans'), ('trans.expand.weight', 'trans.expand.bias')),
        (dict(init='zero_scale'), ('scale',)),
        (dict(combine='trans', init='zero_scale'), ('scale',)),
        (dict(init='gate_bias'), ('proj.up.weight',)),
    ],
)
def test_zero_init_names_per_instance(kwargs, zero_init):
    adapter = build(kwargs)
    assert adapter.zero_init == zero_init
    params = dict(adapter.named_parameters())
    assert all(not params[n].any() for n in zero_init)
    if adapter.init == 'zero_scale' and adapter.proj is not None:
        assert adapter.proj.up.weight.abs().sum() > 0  # random, as the down-projection


@pytest.mark.parametrize(
    'init_cfg',
    [
        dict(type='Kaiming', layer='Conv2d'),
        dict(type='Normal', layer=['Conv2d'], std=0.5, bias=0.3),
    ],
    ids=['kaiming', 'normal'],
)
@parametrize_variants
def test_init_cfg_keeps_the_zero_start(kwargs, init_cfg):
    adapter = build(kwargs, init_cfg=init_cfg)
    adapter.init_weights()
    x = inputs()
    assert torch.equal(adapter(x), x)
    if adapter.init == 'gate_bias':  # restored with the zero start
        assert torch.all(adapter.trans.expand.bias == math.log(9.0))


@pytest.mark.parametrize('dropout', [0.0, 0.3])
@parametrize_variants
def test_with_cp_and_dropout(kwargs, dropout):
    adapter = build(kwargs, dropout=dropout)
    move_off_zero_start(adapter)
    checkpointed = copy.deepcopy(adapter)
    checkpointed.with_cp = True
    x = inputs().requires_grad_(True)
    results = []
    for module in (adapter, checkpointed):
        torch.manual_seed(2)  # the same dropout mask
        out = module(x)
        results.append(
            [out] + list(torch.autograd.grad(out.pow(2).sum(), [x] + list(module.parameters())))
        )
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    if dropout:
        assert ((results[0][0] - x) == 0).float().mean() > 0.15  # part of H(F) dropped
        adapter.eval()
        torch.testing.assert_close(adapter(x), x + adapter.residual(x))


def test_each_combine_computes_its_equation():
    x = inputs()
    for combine in ('product', 'sum', 'proj', 'trans'):
        adapter = build(dict(combine=combine))
        move_off_zero_start(adapter)
        proj = adapter.proj(x) if adapter.proj is not None else None
        trans = adapter.trans(x) if adapter.trans is not None else None
        if combine == 'product':
            want = x + proj * trans
        elif combine == 'sum':
            want = x + proj + trans
        elif combine == 'proj':
            want = x + proj
        else:
            want = x * 2 * trans
        torch.testing.assert_close(adapter(x), want)
        residual, gate = adapter.residual_and_gate(x)
        torch.testing.assert_close(residual, want - x)
        if combine in ('product', 'trans'):
            torch.testing.assert_close(gate, trans)
            assert 0 < gate.min() and gate.max() < 1
        else:
            assert gate is None
    sum_adapter = build(dict(combine='sum'))
    move_off_zero_start(sum_adapter)
    z = sum_adapter.trans(x)  # Expand's linear output, no sigmoid
    assert z.min() < 0 or z.max() > 1
    assert build(dict(combine='proj')).trans is None
    assert build(dict(combine='trans')).proj is None


@pytest.mark.parametrize('stride, size', [(2, (7, 5)), (3, (7, 8)), (2, (1, 1)), (4, (6, 6))])
def test_trans_stride_is_trans_of_the_pooled_map_upsampled_by_nearest(stride, size):
    adapter = build(dict(trans_stride=stride))
    full = copy.deepcopy(adapter.trans)
    full.stride = 1
    x = inputs(size=size)
    gate = adapter.trans(x)
    assert gate.shape == x.shape
    pooled = F.avg_pool2d(x, stride, ceil_mode=True)
    low = full(pooled)
    assert low.shape[-2:] == tuple(math.ceil(s / stride) for s in size)
    torch.testing.assert_close(gate, nearest_upsample(low, stride, size))
    torch.testing.assert_close(gate[..., ::stride, ::stride], low)
    assert torch.equal(adapter(x), x)


def test_zero_scale_gradients_scale_at_step_0_branches_from_step_2():
    adapter = build(dict(init='zero_scale'))
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    x, target = inputs(), inputs(seed=3)
    for step in range(2):
        opt.zero_grad()
        (adapter(x) - target).pow(2).mean().backward()
        branches = [p.grad.abs().sum() for n, p in adapter.named_parameters() if n != 'scale']
        assert adapter.scale.grad.abs().sum() > 0
        assert all(g == 0 for g in branches) if step == 0 else all(g > 0 for g in branches)
        opt.step()


def test_gate_bias_opens_the_gate_and_speeds_up_proj():
    x, target = inputs(), inputs(seed=3)
    first_grads = {}
    for init in ('zero_up', 'gate_bias'):
        adapter = build(dict(init=init))
        gate = adapter.trans(x)
        if init == 'gate_bias':
            assert torch.all(adapter.trans.expand.bias == math.log(9.0))
            assert 0.8 < gate.mean() < 0.95
        (adapter(x) - target).pow(2).mean().backward()
        first_grads[init] = adapter.proj.up.weight.grad.norm()
    assert first_grads['gate_bias'] > 1.4 * first_grads['zero_up']


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (
            dict(combine='prod'),
            "combine must be one of 'product', 'sum', 'proj', 'trans', got 'prod'",
        ),
        (dict(combine=None), "combine must be one of .*, got None"),
        (dict(init='zero'), "init must be one of 'zero_up', 'zero_scale', 'gate_bias', got 'zero'"),
        (dict(channel_attention='no'), "channel_attention must be True or False, got 'no'"),
        (dict(spatial_attention=0), 'spatial_attention must be True or False, got 0'),
        (dict(trans_stride=0), 'trans_stride must be a positive int, got 0'),
        (dict(trans_stride=1.5), 'trans_stride must be a positive int, got 1.5'),
        (
            dict(combine='sum', init='gate_bias'),
            "init='gate_bias' opens the sigmoid gate on Proj, which only combine='product' has, "
            "got combine='sum'",
        ),
    ],
)
def test_bad_switches_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=f'MSLoRAAdapter: {message}'):
        MSLoRAAdapter(channels=C, **kwargs)


@pytest.mark.parametrize('combine', ['proj', 'sum', 'trans'])
def test_reweighting_records_variants(combine):
    torch.manual_seed(0)
    model = MSLoRABackbone(
        backbone=RESNET18,
        adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4, combine=combine),
    )
    model.eval()
    with torch.no_grad(), record_reweighting(model) as records:
        model(torch.randn(1, 3, 32, 32))
    first = records['layer1.0']
    assert torch.equal(first['before'], first['after'])
    assert ('gate' in first) == (combine == 'trans')
