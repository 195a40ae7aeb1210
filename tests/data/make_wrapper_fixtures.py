"""Write the wrapper fixtures of tests/data/wrapper_<version>/ with the installed mmslora.

The fixtures pin what checkpoints and adapter files of this version hold, so later
versions are tested against them (tests/test_models/test_wrapper_fixtures.py). They were
written by mmslora 0.1.0 (commit e5cf77e) with

    python tests/data/make_wrapper_fixtures.py

and are never rewritten by later versions: a new version gets a new folder.

Per model (``resnet``: a two-stage ResNet-18 of 4 base channels with MSLoRA as the
default set and LoRA as the named set ``task_b``; ``vit``: a two-layer ViT of 8
channels, MSLoRA on 'tokens' blocks, and MSLoRA as the set ``task_b``):

* ``<model>_checkpoint.safetensors``: the whole wrapper's ``state_dict()``;
* ``<model>_io.safetensors``: the input ``x`` and the outputs ``default`` and
  ``task_b`` (the first feature map with that set active);
* ``<model>_adapters/``: :func:`~mmslora.models.save_adapter` of the whole model;
  ``resnet_mslora/`` and ``resnet_lora/``: one set each (``adapter_name``).
"""
import os.path as osp
import sys

import torch
from safetensors.torch import save_file

from mmslora.models import MSLoRABackbone, save_adapter
from mmslora.version import __version__

MSLORA = dict(type='mmslora.MSLoRAAdapter', hidden_dim=4, groups=2)
LORA = dict(type='mmslora.LoRA', rank=2, targets=r'layer1\.0\.conv[12]')
RESNET = dict(type='mmdet.ResNet', depth=18, base_channels=4, stem_channels=4,
              num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
              init_cfg=None)
VIT = dict(type='mmpretrain.VisionTransformer', img_size=16, patch_size=8,
           arch=dict(embed_dims=8, num_layers=2, num_heads=2, feedforward_channels=16),
           out_type='featmap', init_cfg=None)
#: (fixture name, backbone, default adapter, named set's adapter, input size)
MODELS = {
    'resnet': (RESNET, MSLORA, LORA, (2, 3, 16, 24)),
    'vit': (VIT, MSLORA, MSLORA, (2, 3, 16, 16)),
}


def build(name: str) -> MSLoRABackbone:
    """The fixture model ``name`` as built before its weights were moved."""
    backbone, adapter, named, _ = MODELS[name]
    torch.manual_seed(0)
    model = MSLoRABackbone(backbone=backbone, adapter=adapter)
    model.add_adapter('task_b', named)
    return model.eval()


def move_weights(model: MSLoRABackbone) -> None:
    """Move every parameter off its init (zero starts included), reproducibly."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def outputs(model: MSLoRABackbone, x: torch.Tensor) -> dict:
    """The first output feature map with each set active."""
    results = {}
    with torch.no_grad():
        for set_name in ('default', 'task_b'):
            model.set_adapter(set_name)
            results[set_name] = model(x)[0].contiguous()
    model.set_adapter('default')
    return results


def main(out_dir: str) -> None:
    for name, (_, _, _, size) in MODELS.items():
        model = build(name)
        move_weights(model)
        x = torch.randn(size, generator=torch.Generator().manual_seed(2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  osp.join(out_dir, f'{name}_checkpoint.safetensors'))
        save_file(dict(x=x, **outputs(model, x)), osp.join(out_dir, f'{name}_io.safetensors'))
        save_adapter(model, osp.join(out_dir, f'{name}_adapters'))
        if name == 'resnet':
            save_adapter(model, osp.join(out_dir, 'resnet_mslora'), adapter_name='default')
            save_adapter(model, osp.join(out_dir, 'resnet_lora'), adapter_name='task_b')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else
         osp.join(osp.dirname(osp.abspath(__file__)), f'wrapper_{__version__}'))
