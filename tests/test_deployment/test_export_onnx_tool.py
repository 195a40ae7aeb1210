"""tools/deployment/export_onnx.py (``mmslora-export-onnx``) end to end: a config and a
checkpoint in, ONNX files out, checked in onnxruntime; and the reasons it gives for
what it cannot export."""

import os
import os.path as osp
import subprocess
import sys

import onnx
import pytest
import torch

from mmslora.deployment import why_not_exportable
from mmslora.utils.config import build_model_from_config, load_config

pytest.importorskip('onnxruntime', reason='--verify runs the graphs in onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: an mmpretrain classifier with MSLoRA on a narrow ResNet-18 (random init)
CLASSIFIER = '''
default_scope = 'mmpretrain'
model = dict(
    type='mmpretrain.ImageClassifier',
    data_preprocessor=dict(type='mmpretrain.ClsDataPreprocessor', num_classes=5,
                           mean=[127.0] * 3, std=[128.0] * 3),
    backbone=dict(type='mmslora.MSLoRABackbone',
                  backbone=dict(type='mmpretrain.ResNet', depth=18, base_channels=16,
                                stem_channels=16, init_cfg=None),
                  adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4)),
    neck=dict(type='mmpretrain.GlobalAveragePooling'),
    head=dict(type='mmpretrain.LinearClsHead', num_classes=5, in_channels=128))
'''


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The config file and a checkpoint whose adapters left their zero start."""
    folder = tmp_path_factory.mktemp('cls')
    config = folder / 'cls.py'
    config.write_text(CLASSIFIER)
    torch.manual_seed(0)
    model = build_model_from_config(load_config(str(config)))
    with torch.no_grad():
        for param in model.backbone.adapters.parameters():
            param.normal_(0, 0.1)
    checkpoint = folder / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, str(checkpoint))
    return str(config), str(checkpoint)


def test_tool_exports_every_part_and_verifies(trained, tmp_path):
    out = tmp_path / 'onnx'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [
            sys.executable,
            'tools/deployment/export_onnx.py',
            *trained,
            str(out),
            '--shape',
            '64',
            '64',
            '--torchscript',
            '--opset',
            '17',
            '--verify',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for part in ('backbone', 'features', 'model'):
        path = out / f'{part}.onnx'
        assert f'{part}: wrote {path}' in proc.stdout and 'within --rtol' in proc.stdout
        graph = onnx.load(str(path))
        assert graph.opset_import[0].version == 17
        assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [
            1,
            3,
            64,
            64,
        ]
    # the classifier's 'tensor' mode: its 5 logits
    logits = onnx.load(str(out / 'model.onnx')).graph.output
    assert [d.dim_value for d in logits[0].type.tensor_type.shape.dim] == [1, 5]


def test_bad_requests_are_refused_with_the_fix(trained, tmp_path, capsys):
    from mmslora.cli.export_onnx import main

    with pytest.raises(SystemExit):
        main([*trained, str(tmp_path), '--shape', '0', '64'])
    assert '--shape and --batch must be positive' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*trained, str(tmp_path), '--parts', 'head'])
    assert "invalid choice: 'head'" in capsys.readouterr().err


class _TwoStage(torch.nn.Module):
    with_rpn = True


def test_reasons_name_the_cause_and_what_to_do():
    two_stage = why_not_exportable(_TwoStage(), 'model', TypeError('x'))
    assert 'region proposals' in two_stage and "Export 'features'" in two_stage
    needs_samples = why_not_exportable(
        torch.nn.Module(), 'model', TypeError("'NoneType' object is not iterable")
    )
    assert 'needs data samples' in needs_samples and 'NoneType' in needs_samples
    pooling = why_not_exportable(
        torch.nn.Module(),
        'model',
        RuntimeError(
            'Unsupported: ONNX export of operator adaptive_avg_pool2d, output size that are '
            'not factor of input size'
        ),
    )
    assert '--dynamo' in pooling and 'multiple of every pooling scale' in pooling
