"""mmslora.utils.checkpoint.diagnosis: refused and damaged checkpoints raise errors
that name the file and what is wrong, and a refused payload never runs."""

import collections
import fractions
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from mmengine.runner import checkpoint as mm_checkpoint

import mmslora  # noqa: F401  (installs the safe loader)
from mmslora.utils.checkpoint import (
    TRUST_ENV_VAR,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)
from mmslora.utils.checkpoint.diagnosis import globals_in_pickle
from mmslora_testing import CLS, checkpointing_runner, evil_checkpoint, load_tool, toy_model

SYSTEM = (['posix.system'], ['nt.system'])


# --------------------------------------------------------------------------
# a malicious file is refused and its payload does not run
# --------------------------------------------------------------------------
@pytest.mark.usefixtures('loading_path')
@pytest.mark.parametrize('via', ['safe_torch_load', 'load_checkpoint', 'runner'])
def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch, via):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)
    # an explicit weights_only=True is not overridden by torch's escape hatch
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'PAYLOAD_RAN'
    path = tmp_path / 'evil.pth'
    evil_checkpoint(path, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        if via == 'safe_torch_load':
            safe_torch_load(path)
        elif via == 'load_checkpoint':
            mm_checkpoint.load_checkpoint(toy_model(), str(path))
        else:
            checkpointing_runner(tmp_path / 'work', 'evil', load_from=str(path)).load_or_resume()
    assert info.value.filename == str(path)
    assert info.value.globals in SYSTEM
    message = str(info.value)  # names both opt-ins
    assert f'{TRUST_ENV_VAR}=1' in message and 'allow_globals(' in message
    assert not marker.exists()


@pytest.mark.usefixtures('loading_path')
def test_malicious_legacy_format_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'PAYLOAD_RAN'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    path = tmp_path / 'evil_legacy.pth'
    torch.save({'x': Payload()}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.globals in SYSTEM
    assert not marker.exists()


@pytest.mark.usefixtures('loading_path')
def test_refusal_lists_every_offending_global(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)
    marker = tmp_path / 'PAYLOAD_RAN'

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {marker}',))

    path = tmp_path / 'two.pth'
    torch.save({'ratio': fractions.Fraction(1, 3), 'meta': Payload()}, str(path))
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.globals == ['fractions.Fraction']  # the first one refused
    listed = str(info.value).split('All non-allowlisted globals in this file: ')[1]
    assert sorted(listed.split('.\n')[0].split(', ')) == sorted(
        ['fractions.Fraction', f'{os.system.__module__}.system']
    )
    assert not marker.exists()


@pytest.mark.parametrize('protocol', [2, 4])
def test_globals_in_pickle_reads_the_opcodes(protocol):
    """GLOBAL (protocol 2) and STACK_GLOBAL with memoized module names (4)."""
    obj = {'a': (os.system, os.getcwd), 'b': collections.OrderedDict(), 'c': os.system}
    module = os.system.__module__
    assert globals_in_pickle(pickle.dumps(obj, protocol=protocol)) == [
        f'{module}.system',
        f'{module}.getcwd',
        'collections.OrderedDict',
    ]


def test_trust_opt_in_does_not_hide_damage(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV_VAR, '1')
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    with pytest.raises(DamagedCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.reason == 'the file is empty'


# --------------------------------------------------------------------------
# damaged files
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    'damage, reason',
    [
        ('half', 'truncated or corrupted'),
        ('head', 'truncated or corrupted'),
        ('empty', 'the file is empty'),
        ('html', 'neither a zip-based nor a legacy'),
        ('pkl_crc', 'fails its CRC check'),
    ],
)
def test_damaged_checkpoint_is_reported(trained, tmp_path, damage, reason):
    good = (trained[0] / 'iter_4.pth').read_bytes()
    path = tmp_path / f'{damage}.pth'
    if damage == 'half':
        data = good[: len(good) // 2]
    elif damage == 'head':
        data = good[:10]
    elif damage == 'empty':
        data = b''
    elif damage == 'html':
        data = b'<html><body>502 Bad Gateway</body></html>'
    else:  # flip a byte inside data.pkl; the zip member CRC catches it
        with zipfile.ZipFile(io.BytesIO(good)) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith('data.pkl'))
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
        data = bytearray(good)
        data[offset] ^= 0xFF
        data = bytes(data)
    path.write_bytes(data)
    with pytest.raises(DamagedCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.filename == str(path)
    assert reason in info.value.reason
    assert 'download it again' in str(info.value)  # the fix
    # and the same through mmengine
    with pytest.raises(DamagedCheckpointError) as info:
        mm_checkpoint.load_checkpoint(toy_model(), str(path))
    assert info.value.filename == str(path)


@pytest.mark.usefixtures('loading_path')
def test_truncated_legacy_format_is_reported(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save(
        {'w': torch.ones(3), 'n': np.float64(1.5)}, str(path), _use_new_zipfile_serialization=False
    )
    assert safe_torch_load(path)['n'] == 1.5
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpointError) as info:
        safe_torch_load(path)
    assert info.value.filename == str(path)
    assert info.value.reason.startswith('the legacy-format pickle ends early')


@pytest.mark.usefixtures('one_thread')
def test_damaged_checkpoint_through_the_train_tool(fashion_root, trained, tmp_path):
    damaged = tmp_path / 'iter_4.pth'
    data = (trained[0] / 'iter_4.pth').read_bytes()
    damaged.write_bytes(data[: len(data) - 4096])
    train = load_tool('tools/train.py')
    with pytest.raises(DamagedCheckpointError) as info:
        train.main(
            [
                CLS,
                '--work-dir',
                str(tmp_path / 'work'),
                '--resume',
                str(damaged),
                '--cfg-options',
                f'train_dataloader.dataset.data_root={fashion_root}',
                f'val_dataloader.dataset.data_root={fashion_root}',
                'train_dataloader.dataset.indices=8',
                'val_dataloader.dataset.indices=8',
                'train_dataloader.num_workers=0',
                'val_dataloader.num_workers=0',
                'experiment_name=errors_damaged',
                'log_level=WARNING',
            ]
        )
    assert info.value.filename == str(damaged)
