"""mmslora.compat.mmcv: mmpretrain's NumPy drop-path rates become Python floats."""

import numpy as np

from mmslora.compat.mmcv import python_drop_probs
from mmslora.models import MSLoRABackbone
from mmslora_testing import TINY_VIT_MMPRETRAIN, build_in_scope, wrap

VIT = dict(type='mmpretrain.VisionTransformer', drop_path_rate=0.2, **TINY_VIT_MMPRETRAIN)


def _drop_probs(module):
    return [m.drop_prob for m in module.modules() if 'drop_prob' in m.__dict__]


def test_numpy_drop_probs_become_equal_floats():
    plain = build_in_scope('mmpretrain', VIT)
    before = _drop_probs(plain)
    assert any(isinstance(p, np.generic) for p in before)  # upstream's NumPy values
    assert python_drop_probs(plain) == sum(isinstance(p, np.generic) for p in before)
    after = _drop_probs(plain)
    assert all(type(p) is float for p in after) and after == [float(p) for p in before]
    assert python_drop_probs(plain) == 0  # nothing left to change


def test_the_wrapper_makes_them_floats():
    model = build_in_scope('mmpretrain', wrap(VIT))
    assert isinstance(model, MSLoRABackbone)
    assert all(type(p) is float for p in _drop_probs(model.backbone))
