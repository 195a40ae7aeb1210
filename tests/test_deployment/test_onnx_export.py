"""ONNX export of every fine-tuning method on real mm* backbones, with the default
frozen fast path, by both of torch's exporters, checked in onnxruntime.

The TorchScript-based exporter (the one MMDeploy drives) covers every method on a
ResNet, a Swin and a ViT (about a second each); the torch.export-based one (``dynamo``,
2 to 30 s a model on 2 cores) covers MSLoRA, LoRA and Mona on the CNN and on ViT, and
MSLoRA on Swin. The adapters are moved away from their zero start, so an adapter that
the graph lost would show.
"""

import warnings

import pytest
import torch
import torch.nn as nn

from mmslora.compat.torch import dynamo_onnx_unavailable
from mmslora.deployment import FlatOutputs, export_onnx, max_differences, onnxruntime_outputs
from mmslora.models.peers import METHODS
from mmslora_testing import NARROW_RESNET18, TINY_SWIN, TINY_VIT_MMPRETRAIN, build_method

pytest.importorskip('onnxruntime', reason='ONNX export is checked in onnxruntime')

BACKBONES = {
    'mmdet-resnet18': (
        'mmdet',
        dict(NARROW_RESNET18, out_indices=(1, 3)),
    ),
    'mmdet-swin': ('mmdet', dict(type='mmdet.SwinTransformer', **TINY_SWIN)),
    'mmpretrain-vit': (
        'mmpretrain',
        dict(type='mmpretrain.VisionTransformer', **TINY_VIT_MMPRETRAIN),
    ),
}
ADAPTERS = dict(
    mslora=dict(hidden_dim=8, groups=4),
    adapter=dict(hidden_dim=8),
    mona=dict(hidden_dim=8),
    lora=dict(rank=2),
)
RTOL = 1e-4
# dynamo: MSLoRA, LoRA and Mona on the CNN and on ViT, MSLoRA on Swin (its export is
# the slowest, 20-30 s a model)
CASES = (
    [(m, b, 'torchscript') for b in BACKBONES for m in METHODS]
    + [
        (m, b, 'dynamo')
        for b in ('mmdet-resnet18', 'mmpretrain-vit')
        for m in ('mslora', 'lora', 'mona')
    ]
    + [('mslora', 'mmdet-swin', 'dynamo')]
)


def _model(method: str, backbone: str) -> nn.Module:
    """The wrapped backbone in eval mode (fast path on, where the method freezes), with
    random BN statistics and adapters away from their zero start."""
    scope, cfg = BACKBONES[backbone]
    model = build_method(
        method, scope, cfg, **(dict(adapter=ADAPTERS[method]) if method in ADAPTERS else {})
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
        for param in model.adapters.parameters():
            param.normal_(0, 0.1, generator=gen)
    return model.eval()


@pytest.mark.parametrize('method,backbone,exporter', CASES)
def test_export_equals_onnxruntime(method, backbone, exporter, tmp_path, one_thread):
    if exporter == 'dynamo' and dynamo_onnx_unavailable():
        pytest.skip(dynamo_onnx_unavailable())
    model = _model(method, backbone)
    if method != 'full':
        assert model.fast_path_report is not None  # the default, left on
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    flat = FlatOutputs(model)
    with torch.no_grad():
        want = flat(x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's warnings on shape arithmetic
        path = export_onnx(flat, (x,), str(tmp_path / 'm.onnx'), exporter)
    abs_diff, rel_diff = max_differences(onnxruntime_outputs(path, (x,)), want)
    assert rel_diff <= RTOL, (abs_diff, rel_diff)
    assert model.training is False


def test_export_leaves_training_unchanged(tmp_path, one_thread):
    """After an export the fast path still trains as before: the same outputs and
    gradients as a model never exported (the export changed no state)."""
    model, exported = _model('mslora', 'mmdet-resnet18'), _model('mslora', 'mmdet-resnet18')
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        export_onnx(FlatOutputs(exported), (x[:1],), str(tmp_path / 'm.onnx'), 'torchscript')
    for m in (model, exported):
        m.train()
        sum(o.square().mean() for o in m(x)).backward()
    for (name, a), b in zip(model.named_parameters(), exported.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), name
