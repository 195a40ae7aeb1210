import pytest
import torch
import torch.nn.functional as F

from mmslora.models import MSLoRAAdapter
from mmslora_testing import skip_unless_autocast


def test_identity_at_init_and_shapes():
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=32, hidden_dim=16, groups=4)
    x = torch.randn(2, 32, 9, 7)
    out = adapter(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)  # Proj's up-projection starts at zero


def test_residual_is_proj_times_trans():
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=16, hidden_dim=8, groups=2)
    torch.nn.init.normal_(adapter.proj.up.weight)
    x = torch.randn(1, 16, 5, 5)
    gate = adapter.trans(x)
    assert gate.min() > 0 and gate.max() < 1  # Trans is a sigmoid gate
    expected = x + adapter.proj(x) * gate
    torch.testing.assert_close(adapter(x), expected)
    assert not torch.equal(adapter(x), x)


def test_parameter_count_matches_formula():
    c, d, g = 64, 32, 8
    adapter = MSLoRAAdapter(channels=c, hidden_dim=d, groups=g, kernel_sizes=(3, 5), reduction=4)
    proj = 2 * c * d // g
    trans = (
        c * d // g
        + 2 * d
        + (9 + 1 + 25 + 1) * d
        + (d * 8 + 8)
        + (8 * d + d)
        + (2 * 49 + 1)
        + (d * c // g + c)
    )
    assert sum(p.numel() for p in adapter.parameters()) == proj + trans


def test_gradients_reach_both_branches_after_two_steps():
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=16, hidden_dim=8, groups=2)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    x = torch.randn(2, 16, 6, 6)
    target = torch.randn(2, 16, 6, 6)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        loss = (adapter(x) - target).pow(2).mean()
        loss.backward()
        grads.append(adapter.trans.expand.weight.grad.abs().sum().item())
        opt.step()
    assert grads[0] == 0.0  # product with the zero-initialised Proj
    assert grads[1] > 0.0


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (
            dict(channels=30, groups=8, strict_groups=True),
            'channels=30 is not divisible by groups=8',
        ),
        (
            dict(channels=32, hidden_dim=20, groups=8, strict_groups=True),
            'hidden_dim=20 is not divisible by groups=8',
        ),
        (dict(channels=32, kernel_sizes=(3, 4)), 'kernel size 4 must be odd'),
        (dict(channels=32, spatial_kernel=6), 'kernel size 6 must be odd'),
        (dict(channels=32, kernel_sizes=()), 'kernel_sizes is empty'),
        (dict(channels=0), 'channels must be a positive int'),
    ],
)
def test_invalid_sizes_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSLoRAAdapter(**kwargs)


@pytest.mark.parametrize(
    'channels, hidden_dim, groups, fitted',
    [(26, 64, 8, 2), (18, 64, 8, 2), (24, 64, 8, 8), (30, 20, 8, 5), (7, 64, 8, 1)],
)
def test_groups_that_do_not_divide_become_the_largest_that_does(
    channels, hidden_dim, groups, fitted
):
    adapter = MSLoRAAdapter(channels=channels, hidden_dim=hidden_dim, groups=groups)
    assert adapter.groups == fitted
    assert (adapter.adjustment is None) == (fitted == groups)
    if adapter.adjustment:
        assert f'groups {groups} -> {fitted}' in adapter.adjustment
    x = torch.randn(1, channels, 5, 4)
    assert torch.equal(adapter(x), x)  # still the zero start


def test_wrong_input_channels_named():
    adapter = MSLoRAAdapter(channels=16, hidden_dim=8, groups=2)
    with pytest.raises(ValueError, match=r'expects a \(B, 16, H, W\) feature map'):
        adapter(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels-last'])
@pytest.mark.parametrize('kernel_sizes', [(3, 5, 7), (1, 5), (3,)])
def test_fused_forward_equals_layer_by_layer(kernel_sizes, channels_last, device):
    """``forward`` (fused_mslora) computes ``F + Proj(F) * Trans(F)`` of the modules,
    values and gradients, with and without autograd."""
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=32, hidden_dim=16, groups=4, kernel_sizes=kernel_sizes)
    for p in adapter.parameters():  # away from the zero start, so every branch counts
        torch.nn.init.normal_(p, std=0.2)
    adapter.to(device)
    x = torch.randn(2, 32, 9, 7).to(device)
    if channels_last:  # token layouts hand over a channels-last strided map
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.no_grad():
        reference = x + adapter.proj(x) * adapter.trans(x)
        torch.testing.assert_close(adapter(x), reference, rtol=1e-5, atol=1e-5)
    params = [x] + list(adapter.parameters())
    want = torch.autograd.grad((x + adapter.residual(x)).pow(2).sum(), params)
    got = torch.autograd.grad(adapter(x).pow(2).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_dropout_in_training_uses_layer_by_layer_path():
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=16, hidden_dim=8, groups=2, dropout=0.5)
    torch.nn.init.normal_(adapter.proj.up.weight)
    x = torch.randn(1, 16, 5, 5)
    adapter.eval()
    torch.testing.assert_close(adapter(x), x + adapter.proj(x) * adapter.trans(x))
    adapter.train()
    out = adapter(x)
    delta = out - x
    assert (delta == 0).float().mean() > 0.2  # dropout zeroed part of H(F)


# today's keys and shapes (C=32, D=16, G=4): the switches' defaults must keep them, so
# existing checkpoints load
DEFAULT_STATE = [
    ('proj.down.weight', (16, 8, 1, 1)),
    ('proj.up.weight', (32, 4, 1, 1)),
    ('trans.reduce.weight', (16, 8, 1, 1)),
    ('trans.norm.weight', (16,)),
    ('trans.norm.bias', (16,)),
    ('trans.multi_scale.0.weight', (16, 1, 3, 3)),
    ('trans.multi_scale.0.bias', (16,)),
    ('trans.multi_scale.1.weight', (16, 1, 5, 5)),
    ('trans.multi_scale.1.bias', (16,)),
    ('trans.multi_scale.2.weight', (16, 1, 7, 7)),
    ('trans.multi_scale.2.bias', (16,)),
    ('trans.channel_attn.1.weight', (4, 16, 1, 1)),
    ('trans.channel_attn.1.bias', (4,)),
    ('trans.channel_attn.3.weight', (16, 4, 1, 1)),
    ('trans.channel_attn.3.bias', (16,)),
    ('trans.spatial_attn.weight', (1, 2, 7, 7)),
    ('trans.spatial_attn.bias', (1,)),
    ('trans.expand.weight', (32, 4, 1, 1)),
    ('trans.expand.bias', (32,)),
]


@pytest.mark.parametrize(
    'kwargs',
    [
        {},
        dict(
            combine='product',
            channel_attention=True,
            spatial_attention=True,
            init='zero_up',
            trans_stride=1,
        ),
    ],
    ids=['implicit', 'explicit'],
)
def test_defaults_keep_the_state_dict_keys(kwargs):
    adapter = MSLoRAAdapter(channels=32, hidden_dim=16, groups=4, **kwargs)
    assert [(k, tuple(v.shape)) for k, v in adapter.state_dict().items()] == DEFAULT_STATE
    assert sum(p.numel() for p in adapter.parameters()) == 2199
    assert adapter.zero_init == ('proj.up.weight',)
    assert adapter.scale is None and adapter.combine == 'product'


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_forward_then_backward_outside_it(dtype, device):
    """The AMP pattern: forward under autocast, backward after it (the fused backward
    multiplies in the dtype its forward ran in); gradients near float32's."""
    skip_unless_autocast(device, dtype)
    torch.manual_seed(0)
    adapter = MSLoRAAdapter(channels=32, hidden_dim=16, groups=4)
    torch.nn.init.normal_(adapter.proj.up.weight, std=0.1)
    adapter.to(device)
    x = torch.randn(2, 32, 9, 7).to(device)
    grads = []
    for amp in (True, False):
        adapter.zero_grad()
        xi = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = adapter(xi)
        out.float().pow(2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in adapter.parameters()])
    for got, want in zip(*grads):
        assert got.dtype == want.dtype
        assert (got - want).norm() <= 0.05 * want.norm() + 1e-6


@pytest.mark.parametrize(
    'channels, ratio, width, adjusted',
    [
        (16, 0.5, 8, True),  # a narrow block: D = C / 2
        (24, 0.5, 8, True),  # C / 2 = 12, down to a multiple of G = 8
        (40, 0.25, 8, True),  # at least G
        (256, 0.5, 32, False),  # wide enough: D as given
    ],
)
def test_max_hidden_ratio_narrows_the_width(channels, ratio, width, adjusted):
    """The width rule caps D at ratio x C in multiples of the groups; the groups stay,
    the zero start holds, and the adjustment is recorded."""
    adapter = MSLoRAAdapter(channels, hidden_dim=32, groups=8, max_hidden_ratio=ratio)
    assert adapter.proj.down.out_channels == adapter.trans.reduce.out_channels == width
    assert adapter.groups == 8
    assert (adapter.adjustment is not None) == adjusted
    if adjusted:
        assert f'hidden_dim 32 -> {width}' in adapter.adjustment
    x = torch.randn(2, channels, 6, 5)
    assert torch.equal(adapter(x), x)
    torch.nn.init.normal_(adapter.proj.up.weight)
    torch.testing.assert_close(adapter(x), x + adapter.residual(x))


@pytest.mark.parametrize('ratio', [0, 1.5, -0.5, '0.5', True])
def test_max_hidden_ratio_out_of_range_is_refused(ratio):
    with pytest.raises(ValueError, match=r'max_hidden_ratio must be a number in \(0, 1\]'):
        MSLoRAAdapter(16, hidden_dim=32, groups=8, max_hidden_ratio=ratio)


def test_channel_attention_equals_its_layers():
    """The squeeze-excite gate's linear maps compute what its 1x1 convolution layers do,
    values and gradients (the fused and the layer-by-layer paths share it)."""
    from mmslora.models.adapter import ChannelAttention

    torch.manual_seed(0)
    attention = ChannelAttention(16, 4)
    t = torch.randn(2, 16, 5, 7, requires_grad=True)
    want = torch.nn.Sequential.forward(attention, t)  # pool, conv, GELU, conv, sigmoid
    got = attention(t)
    torch.testing.assert_close(got, want)
    params = [t] + list(attention.parameters())
    for g, w in zip(
        torch.autograd.grad(got.pow(2).sum(), params),
        torch.autograd.grad(want.pow(2).sum(), params),
    ):
        torch.testing.assert_close(g, w)
    assert [k for k in attention.state_dict()] == ['1.weight', '1.bias', '3.weight', '3.bias']


@pytest.mark.parametrize('kernel_sizes', [(3, 5, 7), (1, 5), (3,)])
def test_multi_scale_kernel_is_the_padded_kernels_averaged_plus_the_residual(kernel_sizes):
    """The one depthwise kernel (built by identity products, which the TorchScript ONNX
    exporter can size) holds the zero-padded kernels' values bitwise, and its
    convolution is ``t + mean_k DWConv_k(t)``."""
    torch.manual_seed(0)
    trans = MSLoRAAdapter(channels=32, hidden_dim=16, groups=4, kernel_sizes=kernel_sizes).trans
    for p in trans.parameters():
        torch.nn.init.normal_(p, std=0.2)
    convs, size = trans.multi_scale, max(kernel_sizes)
    padded = sum(F.pad(c.weight, [(size - c.kernel_size[0]) // 2] * 4) for c in convs)
    centre = torch.zeros(size, size)
    centre[size // 2, size // 2] = 1
    kernel, bias = trans.multi_scale_kernel()
    assert kernel.shape == (16, 1, size, size)
    assert torch.equal(kernel, padded / len(convs) + centre)
    t = torch.randn(2, 16, 9, 7)
    with torch.no_grad():
        want = t + sum(c(t) for c in convs) / len(convs)
        got = F.conv2d(t, kernel, bias, padding=size // 2, groups=16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
