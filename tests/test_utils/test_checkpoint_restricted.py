"""mmslora.utils.checkpoint.restricted: the pickle module of safe loading on a torch
without ``torch.serialization.safe_globals`` resolves exactly the allowlisted globals
and refuses any other before it runs."""

import io
import os
import pickle

import pytest
import torch
from torch import _weights_only_unpickler

from mmslora.utils.checkpoint import allowlist, restricted

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split('.')[:2])


class Payload:
    """Unpickling it runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('protocol', [2, 4])
def test_reduction_payload_is_refused_before_it_runs(tmp_path, protocol):
    marker = tmp_path / 'PAYLOAD_RAN'
    data = pickle.dumps({'w': [1.5], 'meta': Payload(marker)}, protocol=protocol)
    with pytest.raises(allowlist.NotAllowlisted) as info:
        restricted.load(io.BytesIO(data))
    assert info.value.globals == [f'{os.system.__module__}.system']
    assert not marker.exists()


def test_allowlisted_globals_resolve_to_their_objects(monkeypatch):
    monkeypatch.setattr(allowlist, '_extra_globals', [])
    allowed = restricted.allowed_globals()
    assert allowed['torch._utils._rebuild_tensor_v2'] is torch._utils._rebuild_tensor_v2
    assert allowed['mmengine.logging.history_buffer.HistoryBuffer'].__name__ == 'HistoryBuffer'
    assert 'builtins.eval' not in allowed and 'fractions.Fraction' not in allowed
    # pickle protocol 2 writes builtins as __builtin__: still the guarded getattr
    unpickler = restricted.Unpickler(io.BytesIO(b''))
    assert unpickler.find_class('__builtin__', 'getattr') is allowed['builtins.getattr']
    assert allowed['builtins.getattr'] is not getattr
    allowlist.allow_globals(['fractions.Fraction'])
    assert 'fractions.Fraction' in restricted.allowed_globals()


def test_torch_default_globals_cover_this_torch():
    """Everything this torch's own weights-only load allows, the mirror allows."""
    assert set(_weights_only_unpickler._get_allowed_globals()) <= set(
        allowlist.torch_default_globals()
    )


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason=f'torch {torch.__version__} < 2.6 allows '
    'less by default than the torch 2.14 list mirrored',
)
def test_torch_default_globals_allow_nothing_torch_refuses():
    assert set(allowlist.torch_default_globals()) <= set(
        _weights_only_unpickler._get_allowed_globals()
    )
