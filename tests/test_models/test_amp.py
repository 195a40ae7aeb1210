"""Mixed precision through the wrapper: one AMP training step of every fine-tuning method
on a tiny ResNet (MSLoRA's fused adapter and the frozen fast path) and a tiny ViT, under
float16 with a grad scaler and under bfloat16.

On the default device this is CPU autocast; with ``--device cuda`` the same steps run
under CUDA autocast (the GPU leg, ``make test-gpu``, docs/gpu.md). The test marked
``cuda`` compiles an AMP step with inductor, which on CPU would take minutes.
"""

import copy

import pytest
import torch

from mmslora.models.peers import METHODS
from mmslora_testing import (
    NARROW_RESNET18,
    TINY_VIT_MMPRETRAIN,
    build_in_scope,
    build_method,
    flat,
    skip_unless_autocast,
)

BACKBONES = [
    # a narrow ResNet-18 (16 to 128 channels): float16 convolutions are slow on CPU
    (
        'mmdet-resnet18',
        'mmdet',
        dict(NARROW_RESNET18, zero_init_residual=False),
    ),
    (
        'mmpretrain-vit',
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
]
DTYPES = dict(fp16=torch.float16, bf16=torch.bfloat16)
#: relative error (in norm) of all AMP gradients together against float32's (10 and 7
#: mantissa bits; through a random 8-block ResNet, roundings that flip ReLUs add up to
#: 3-6% in float16 and 10-15% in bfloat16 on CPU)
GRAD_RTOL = {torch.float16: 0.1, torch.bfloat16: 0.25}
NO_DROPOUT = dict(mona=dict(adapter=dict(dropout=0.0)))


def _model(method, scope, cfg, device):
    """A wrapped backbone with its adapters moved off their zero start (so every
    adapter parameter has a gradient at the first step), in training mode; no dropout
    (an autocast forward draws other masks than a float32 one)."""
    model = build_method(method, scope, cfg, **NO_DROPOUT.get(method, {}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.adapters.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model.to(device).train()


def _forward(model, x, dtype=None):
    """Outputs and loss with the forward under autocast to ``dtype`` (None: float32, no
    autocast). The loss, in float32, is the mean of each output times fixed random
    weights: a linear loss (a mean of squares of a ViT's layer-normalised tokens is
    nearly constant, and its gradients are rounding noise)."""
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outputs = flat(model(x))
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(o.shape, generator=gen).to(o.device) for o in outputs]
    return outputs, sum((o.float() * w).mean() for o, w in zip(outputs, weights))


#: the learning rate of the SGD step of _amp_step
STEP_LR = 0.1


def _grad_scaler(device, dtype):
    """torch's grad scaler for float16 (None for bfloat16, which needs none)."""
    if dtype != torch.float16:
        return None
    if not hasattr(torch.amp, 'GradScaler'):
        pytest.skip(f'torch {torch.__version__} has no torch.amp.GradScaler (torch >= 2.3)')
    return torch.amp.GradScaler(device.type)


def _assert_near(got, want, rtol, name):
    assert got.dtype == want.dtype and torch.isfinite(got).all(), name
    assert (got - want).norm() <= rtol * want.norm() + 1e-12, (
        name,
        float((got - want).norm() / want.norm()),
    )


@pytest.mark.parametrize('dtype', list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize('method', list(METHODS))
@pytest.mark.parametrize('name, scope, cfg', BACKBONES, ids=[b[0] for b in BACKBONES])
def test_amp_step_of_every_method(name, scope, cfg, method, dtype, device):
    """Outputs in the plain backbone's autocast dtypes; the AMP step as training runs it
    (float16: scaled backward, a step with inf/NaN gradients skipped and the scale
    lowered, as often as needed); the gradients of the step taken near float32's; the
    trainable parameters move and the frozen backbone state stays bitwise."""
    skip_unless_autocast(device, dtype)
    model = _model(method, scope, cfg, device)
    plain = build_in_scope(scope, cfg).to(device)
    plain.eval()  # mmdet's ResNet.train returns None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        plain_dtypes = [o.dtype for o in _forward(plain, x, dtype)[0]]
    outputs, loss = _forward(model, x, dtype)
    assert [o.dtype for o in outputs] == plain_dtypes and torch.isfinite(loss)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:  # a linear probe: nothing in the backbone to differentiate
        return
    want = dict(zip(params, torch.autograd.grad(_forward(model, x)[1], list(params.values()))))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in params}
    before = {k: p.detach().clone() for k, p in params.items()}
    grads = _amp_step(model, x, dtype, params)
    _assert_near(
        torch.cat([g.flatten() for g in grads.values()]),
        torch.cat([g.flatten() for g in want.values()]),
        GRAD_RTOL[dtype],
        'all',
    )
    # (each parameter alone is not compared: a small gradient, such as that of a
    # spatial-attention bias, is a sum that cancels to a tenth of its terms' size, and
    # the low-precision roundings of those terms move it by more than itself)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    # the step moved every weight whose update (SGD at lr 0.1) is above float32's
    # resolution at its value; smaller updates round away in any precision
    moved = 0
    for k, p in params.items():
        visible = (STEP_LR * grads[k]).abs() > 4 * torch.finfo(p.dtype).eps * before[k].abs()
        assert (p != before[k])[visible].all(), k
        moved += int(visible.sum())
    assert moved > sum(p.numel() for p in params.values()) // 2


def _amp_step(model, x, dtype, params, tries=8):
    """One SGD step under autocast, as a training loop takes it; the (unscaled)
    gradients of the step taken. Float16 uses torch's grad scaler: a backward with a
    non-finite gradient skips its step (the parameters stay bitwise) and halves the
    scale; a step is taken within ``tries`` backwards."""
    optimizer = torch.optim.SGD(params.values(), lr=STEP_LR)
    scaler = _grad_scaler(x.device, dtype)
    for _ in range(tries):
        optimizer.zero_grad(set_to_none=True)
        loss = _forward(model, x, dtype)[1]
        assert torch.isfinite(loss)
        if scaler is None:
            loss.backward()
            optimizer.step()
            return {k: p.grad for k, p in params.items()}
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = {k: p.grad.clone() for k, p in params.items()}
        finite = all(torch.isfinite(g).all() for g in grads.values())
        before = [p.detach().clone() for p in params.values()]
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if finite:
            assert scaler.get_scale() == scale
            return grads
        assert scaler.get_scale() == scale / 2
        assert all(torch.equal(p, b) for p, b in zip(params.values(), before))
    raise AssertionError(f'no finite float16 gradients in {tries} scaled backwards')


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', list(DTYPES.values()), ids=list(DTYPES))
def test_inductor_compiled_amp_steps_equal_eager_on_cuda(dtype):
    """Inductor's CUDA code for MSLoRA with the frozen fast path under autocast: two
    SGD steps (float16 through the grad scaler; ``fullgraph=True``, no recompilation at
    the second) move the trainable parameters as eager's do."""
    cuda = torch.device('cuda')
    name, scope, cfg = BACKBONES[0]
    eager = _model('mslora', scope, cfg, cuda)
    assert eager.fast_path_report.folded
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1)).to(cuda)
    updates = []
    for model in (compiled, eager):
        params = [p for p in model.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        scaler = _grad_scaler(cuda, dtype)
        for step in range(2):
            optimizer.zero_grad(set_to_none=True)
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                loss = _forward(model, x, dtype)[1]
            assert torch.isfinite(loss)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        updates.append(torch.cat([(p.detach() - s).flatten() for p, s in zip(params, start)]))
    assert updates[1].abs().sum() > 0  # a step was taken
    _assert_near(updates[0], updates[1], GRAD_RTOL[dtype], 'parameter updates')
