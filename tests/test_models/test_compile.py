"""``torch.compile`` of MSLoRABackbone: one graph (no break) for every method, training
and inference equal to eager.

The method table runs dynamo with ``fullgraph=True`` (a graph break raises) and AOT
autograd's min-cut partitioner (``aot_eager_decomp_partition``: the joint forward and
backward graph, decomposed and split as inductor splits it, without inductor's code
generation, which takes about a minute a model on CPU). Inductor itself compiles
MSLoRA on a ResNet, in training and inference.
"""

import copy

import pytest
import torch
import torch.nn as nn
from mmengine.utils import digit_version

from mmslora.models import MSLoRABackbone
from mmslora.models.peers import METHODS
from mmslora_testing import NARROW_RESNET18, TINY_SWIN, TINY_VIT_MMPRETRAIN, build_method, flat

pytestmark = pytest.mark.skipif(
    digit_version(torch.__version__) < digit_version('2.4.0'),
    reason='torch.compile of autograd functions with mark_dirty and of hooks with '
    'kwargs needs torch >= 2.4; eager mode is tested on every torch',
)

BACKBONES = {
    'mmdet-resnet': (
        'mmdet',
        dict(NARROW_RESNET18, out_indices=(1, 3)),
    ),
    # no stochastic depth: eager and compiled draw their random numbers differently
    'mmdet-swin': ('mmdet', dict(type='mmdet.SwinTransformer', drop_path_rate=0.0, **TINY_SWIN)),
    # mmpretrain's drop-path rates are NumPy values, a graph break per block unless the
    # wrapper makes them floats
    'mmpretrain-vit': (
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
}
# no dropout (Mona's default is 0.1): eager and compiled draw random numbers differently
ADAPTERS = dict(
    mslora=dict(hidden_dim=8, groups=4),
    adapter=dict(hidden_dim=8),
    mona=dict(hidden_dim=8, dropout=0.0),
    lora=dict(rank=2),
)
SIZE = 64


def _model(method: str, backbone: str) -> MSLoRABackbone:
    """A seeded wrapped backbone with random BNs (mmdet zero-initialises the last BN
    weight of each residual block, which would cut the gradient of every frozen-BN
    method's parameters before it) and adapters away from their zero start."""
    scope, cfg = BACKBONES[backbone]
    overrides = dict(adapter=ADAPTERS[method]) if method in ADAPTERS else {}
    model = build_method(method, scope, cfg, **overrides)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.uniform_(-0.3, 0.3, generator=gen)
        for param in model.adapters.parameters():
            param.normal_(0, 0.1, generator=gen)
    return model


def _train_steps(model: nn.Module, x: torch.Tensor, steps: int = 2):
    """Outputs and trainable gradients of ``steps`` SGD steps (loss: mean squares).
    After the first step a recompilation raises: the compiled graph must not depend
    on state that a step changes (a cache, a counter)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9) if params else None
    record = []
    for step in range(steps):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            outputs = flat(model(x))
        grads = []
        if optimizer is not None:
            optimizer.zero_grad()
            sum(o.pow(2).mean() for o in outputs).backward()
            grads = [p.grad.clone() for p in params]
            optimizer.step()
        record.append(([o.detach() for o in outputs], grads))
    return record


def _assert_same_steps(got, want, tol):
    """Outputs and gradients equal to ``tol`` (relative, in norm: compiled kernels
    reorder sums, and a rounding that flips one ReLU moves one element far) at every
    step; at the last (after zero-initialised
    parts such as mmdet's residual BN weights moved) every gradient is non-zero."""
    for (outputs, grads), (want_outputs, want_grads) in zip(got, want):
        assert len(outputs) == len(want_outputs) and len(grads) == len(want_grads)
        for a, b in zip(outputs + grads, want_outputs + want_grads):
            assert a.shape == b.shape
            assert (a - b).norm() <= tol * b.norm() + 1e-12, float((a - b).norm() / b.norm())
    assert all(g.abs().sum() > 0 for g in got[-1][1]), 'a trainable parameter got no gradient'


@pytest.mark.parametrize('backbone', list(BACKBONES))
@pytest.mark.parametrize('method', list(METHODS))
def test_one_graph_and_eager_values(method, backbone, one_thread, device):
    """``fullgraph=True``: dynamo raises at any graph break; two training steps (the
    second after the zero-started parts moved) give eager's outputs and gradients, in
    float64 (float32 gradients of random-init backbones differ by 1e-4 from the order
    of the sums alone)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64).to(device)
    eager = _model(method, backbone).double().to(device)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend='aot_eager_decomp_partition', fullgraph=True)
    _assert_same_steps(_train_steps(compiled, x), _train_steps(eager, x), tol=1e-9)


def test_inductor_trains_and_infers_mslora_with_the_fast_path(one_thread, device):
    """Inductor's code, MSLoRA on a ResNet with folded BNs and ReLU masks: training
    steps and inference (the folded inference weights computed in the graph) equal
    eager's; the backbone stays bitwise frozen."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE).to(device)
    eager = _model('mslora', 'mmdet-resnet').to(device)
    report = eager.fast_path_report
    assert report.folded and report.activations  # the fast path is what is compiled
    compiled_model = copy.deepcopy(eager)
    frozen = {k: v.clone() for k, v in compiled_model.backbone.state_dict().items()}
    compiled = torch.compile(compiled_model, fullgraph=True)
    _assert_same_steps(_train_steps(compiled, x), _train_steps(eager, x), tol=1e-3)
    for model in (compiled, eager):
        model.eval()
    with torch.no_grad():
        flat(compiled(x))  # compiles the inference graph; the second call reuses it
        with torch._dynamo.config.patch(error_on_recompile=True):
            _assert_same_steps([(flat(compiled(x)), [])], [(flat(eager(x)), [])], tol=1e-5)
    after = compiled_model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


def test_dynamic_shapes_train_equal_to_eager(one_thread, device):
    """Detection batches change size from one iteration to the next: compiled with
    ``dynamic=True``, MSLoRA with the fast path is one graph for two input sizes, and
    each step equals eager's."""
    torch._dynamo.reset()
    eager = _model('mslora', 'mmdet-resnet').double().to(device)
    compiled = torch.compile(
        copy.deepcopy(eager), backend='aot_eager_decomp_partition', dynamic=True, fullgraph=True
    )
    for size in ((64, 96), (96, 64)):
        x = torch.randn(2, 3, *size, dtype=torch.float64).to(device)
        _assert_same_steps(
            _train_steps(compiled, x, steps=1), _train_steps(eager, x, steps=1), tol=1e-9
        )
