"""Helpers shared by the test files (importable because tests/conftest.py puts this
folder on sys.path; the name avoids mmseg's top-level `tests` package)."""
import copy
import importlib.util
import os.path as osp
import sys

import torch
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py')
SEG = osp.join(ROOT, 'configs/demo/upernet_effnet-lite0-mslora_nuclei-256x256.py')
CLS = osp.join(ROOT, 'configs/demo/effnet-lite0-mslora_fashion-mnist.py')


def load_tool(relative_path: str):
    """Import a script under tools/ as a module (tools/ is not a package)."""
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
