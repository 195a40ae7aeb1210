"""mmslora.utils.checkpoint.allowlist: what safe loading trusts, and the two opt-ins
for trusted files."""

import fractions
import pickle
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import checkpoint as mm_checkpoint

import mmslora  # noqa: F401  (installs the safe loader)
from mmslora.utils.checkpoint import (
    TRUST_ENV_VAR,
    UnsafeCheckpointError,
    allow_globals,
    allowlist,
    loader,
    safe_torch_load,
)
from mmslora_testing import toy_model


@pytest.mark.usefixtures('loading_path')
def test_non_allowlisted_getattr_target_is_refused(tmp_path):
    """builtins.getattr is only allowed for HistoryBuffer's statistics methods."""

    class Sneaky:
        def __init__(self, owner, name):
            self.owner, self.name = owner, name

        def __reduce__(self):
            return (getattr, (self.owner, self.name))

    for owner, name in [(np.ndarray, 'tofile'), (HistoryBuffer, '__init__')]:
        path = tmp_path / f'getattr_{name}.pth'
        torch.save({'x': Sneaky(owner, name)}, str(path))
        with pytest.raises(pickle.UnpicklingError, match=f'getattr.*{name}'):
            safe_torch_load(path)


@pytest.mark.usefixtures('loading_path')
def test_trusted_file_needs_an_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)
    monkeypatch.setattr(allowlist, '_extra_globals', [])
    path = tmp_path / 'custom.pth'
    torch.save({'ratio': fractions.Fraction(3, 4), 'w': torch.ones(2)}, str(path))
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.globals == ['fractions.Fraction']

    # opt-in 1: trust the whole file (full unpickling), with a warning
    monkeypatch.setenv(TRUST_ENV_VAR, '1')
    warnings = []
    monkeypatch.setattr(loader, 'warn', warnings.append)
    assert safe_torch_load(path)['ratio'] == fractions.Fraction(3, 4)
    assert len(warnings) == 1 and str(path) in warnings[0]
    model_file = tmp_path / 'model.pth'  # also through mmengine
    torch.save(
        {'state_dict': toy_model().state_dict(), 'x': fractions.Fraction(1)}, str(model_file)
    )
    mm_checkpoint.load_checkpoint(toy_model(), str(model_file))

    # opt-in 2: allowlist just that global, loading stays weights-only
    monkeypatch.delenv(TRUST_ENV_VAR)
    allow_globals(['fractions.Fraction'])
    assert 'fractions.Fraction' in allowlist.allowed_global_names()
    warnings.clear()
    assert safe_torch_load(path)['ratio'] == fractions.Fraction(3, 4)
    assert warnings == []


@pytest.mark.usefixtures('loading_path')
def test_other_numpy_major_spelling_loads(trained, tmp_path):
    """numpy 2.x pickles its helpers as numpy._core.multiarray.*, numpy 1.x as
    numpy.core.multiarray.*: a file written under the other major version loads."""
    spellings = {
        2: (b'numpy._core.multiarray', b'numpy.core.multiarray'),
        1: (b'numpy.core.multiarray', b'numpy._core.multiarray'),
    }
    ours, other = spellings[int(np.__version__.split('.')[0])]
    src = trained[0] / 'iter_4.pth'
    dst = tmp_path / 'other_numpy.pth'
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith('data.pkl'):
                assert ours in data
                data = data.replace(ours, other)
            zout.writestr(info, data)
    ckpt = safe_torch_load(dst)
    assert ckpt['meta']['iter'] == 4
    assert isinstance(ckpt['message_hub']['runtime_info']['best_score'], np.float32)
