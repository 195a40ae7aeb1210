"""A merged LoRA checkpoint runs in plain mmdet: ``mmslora-merge`` (its ``main``, in this
process) turns a LoRA-tuned RetinaNet R-18's checkpoint into an upstream one, and a
clean virtual environment with the stack but without mmslora loads it with mmdet's
``init_detector`` and gives the adapted model's outputs. CPU, 64 px, seconds."""

import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmslora.cli.merge import main as merge_main
from mmslora.utils.config import build_model_from_config
from mmslora_testing import flat, run_clean, stack_venv

USER_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 'mmslora::_base_/mslora.py']
model = dict(
    backbone=dict(_base_.mslora_backbone, adapter=dict(type='mmslora.LoRA', rank=4),
                  backbone=dict(_base_.model.backbone, init_cfg=None)),
    bbox_head=dict(num_classes=1))
optim_wrapper = _base_.mslora_optim_wrapper
test_pipeline = [dict(type='LoadImageFromNDArray'),
                 dict(type='Resize', scale=(64, 64), keep_ratio=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                       'img_shape', 'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""

PLAIN_CHECK = """
import importlib.util, sys
import numpy as np, torch
from mmdet.apis import inference_detector, init_detector
assert importlib.util.find_spec('mmslora') is None
model = init_detector(sys.argv[1], sys.argv[2], device='cpu')
assert type(model.backbone).__name__ == 'ResNet', type(model.backbone)
ref = torch.load(sys.argv[3], weights_only=True)
with torch.no_grad():
    got = model(ref['x'], mode='tensor')
flat = lambda o: [o] if isinstance(o, torch.Tensor) else [t for i in o for t in flat(i)]
got = flat(got)
assert len(got) == len(ref['outputs']) > 0
for a, b in zip(got, ref['outputs']):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
result = inference_detector(model, np.full((64, 64, 3), 90, np.uint8))
print('CLASSES', model.dataset_meta['classes'], 'BOXES', len(result.pred_instances))
print('MATCH', len(got))
"""


def test_merged_lora_checkpoint_runs_in_plain_mmdet(tmp_path, restore_default_scope):
    config = tmp_path / 'retinanet_r18_lora.py'
    config.write_text(USER_CONFIG)
    model = build_model_from_config(Config.fromfile(str(config)))
    torch.manual_seed(0)
    for adapter in model.backbone.adapters.values():  # a "trained" LoRA: B away from 0
        nn.init.normal_(adapter.lora_B.weight, std=0.05)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outputs = flat(model(x, mode='tensor'))  # the adapted model, adapters hooked
        with model.backbone.disable_adapters():
            plain_outputs = flat(model(x, mode='tensor'))
    assert (outputs[0] - plain_outputs[0]).abs().max() > 1e-3  # the LoRA matters
    torch.save(dict(x=x, outputs=outputs), tmp_path / 'reference.pth')
    ckpt = tmp_path / 'trained.pth'
    meta = dict(
        dataset_meta=dict(classes=('cell',)),
        epoch=np.int64(3),
        hook_msgs=dict(best_score=np.float64(0.5), curve=np.zeros(3)),
    )
    torch.save(dict(meta=meta, state_dict=model.state_dict()), ckpt)

    out = str(tmp_path / 'export' / 'retinanet_r18_merged.pth')
    merge_main([str(config), str(ckpt), out])
    written = torch.load(out, weights_only=True)  # plain types only, as plain mmdet loads
    assert written['meta']['epoch'] == 3 and 'hook_msgs' not in written['meta']
    assert written['meta']['mmslora_merge']['merged'] == ['backbone: default']
    assert not any(
        'adapters' in k or k.startswith('backbone.backbone.') for k in written['state_dict']
    )
    assert 'backbone.layer1.0.conv1.weight' in written['state_dict']
    plain_cfg = Config.fromfile(out[:-4] + '.py')
    assert plain_cfg.model.backbone.type == 'ResNet' and 'mmslora' not in plain_cfg.text

    python, _ = stack_venv(tmp_path / 'venv', with_pip=False)
    script = tmp_path / 'plain_check.py'
    script.write_text(PLAIN_CHECK)
    log = run_clean(
        [python, str(script), out[:-4] + '.py', out, str(tmp_path / 'reference.pth')],
        cwd=str(tmp_path),
    )
    assert f'MATCH {len(outputs)}' in log and "CLASSES ('cell',)" in log


def test_merge_cli_names_the_block_adapter_set(tmp_path, restore_default_scope):
    config = tmp_path / 'retinanet_r18_mslora.py'
    config.write_text(
        USER_CONFIG.replace("adapter=dict(type='mmslora.LoRA', rank=4),", '')
    )  # MSLoRA, the default
    model = build_model_from_config(Config.fromfile(str(config)))
    torch.save(dict(meta={}, state_dict=model.state_dict()), tmp_path / 'trained.pth')
    with pytest.raises(
        ValueError,
        match="adapter set 'default' holds MSLoRAAdapter block "
        "adapters: MSLoRA/Mona/Adapter .* stay modules; export them with "
        "mmslora-export-adapter",
    ):
        merge_main([str(config), str(tmp_path / 'trained.pth'), str(tmp_path / 'out.pth')])
    assert not osp.exists(tmp_path / 'out.pth')
