"""Helpers shared by the test files (importable because tests/conftest.py puts this
folder on sys.path; the name avoids mmseg's top-level `tests` package)."""
import copy
import importlib.util
import os.path as osp
import sys

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py')
SEG = osp.join(ROOT, 'configs/demo/upernet_effnet-lite0-mslora_nuclei-256x256.py')
CLS = osp.join(ROOT, 'configs/demo/effnet-lite0-mslora_fashion-mnist.py')


def load_tool(relative_path: str):
    """Import a script of the repository (tools/, benchmarks/: not packages) as a
    module, once."""
    name = 'mmslora_tool_' + relative_path.replace('/', '_').replace('.py', '')
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, relative_path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def registry_of(scope):
    """The MODELS registry of an OpenMMLab toolbox."""
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def build_in_scope(scope, cfg):
    """Build ``cfg`` from the toolbox's registry inside its default scope."""
    with DefaultScope.overwrite_default_scope(scope):
        return registry_of(scope).build(copy.deepcopy(cfg))


def flat(outputs):
    """The tensors of a backbone's (nested) outputs, in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat(item)]


def assert_same_outputs(model, plain, x):
    """``model`` and ``plain`` give bitwise-equal outputs on ``x`` (eval, no grad)."""
    model.eval()
    plain.eval()
    with torch.no_grad():
        got, want = flat(model(x)), flat(plain(x))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert torch.equal(a, b)


class ToyRegressor(BaseModel):
    """``body(inputs).squeeze(-1)`` as an MMEngine model: squared-error loss in
    ``'loss'`` mode, a list of predictions in ``'predict'`` mode."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, inputs, labels=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.body(inputs).squeeze(-1)
        if mode == 'loss':
            labels = torch.stack(labels) if isinstance(labels, list) else labels
            return dict(loss=((out - labels)**2).mean())
        if mode == 'predict':
            return list(out.detach())
        return out
