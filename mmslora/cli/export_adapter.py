"""Turn a training checkpoint into adapter files.

    mmslora-export-adapter CONFIG CHECKPOINT OUT [--verify] [--cfg-options k=v ...]

(also ``python tools/export_adapter.py ...``; CONFIG is a file or a ``mmslora::`` name).

OUT is a directory that gets ``adapter_model.safetensors`` (every tensor that training
changed: adapters, necks, heads, any unfrozen backbone parameter; no pickle) and
``adapter_config.json`` (the adapter configs, the backbone's type, the mmslora and
torch versions); the frozen pretrained backbone is left out. An OUT ending in ``.pth``
writes the earlier single-file format (deprecated). Load it with
``mmslora.models.load_adapter(model, OUT)`` onto a model built from CONFIG with its
pretrained backbone: the predictions are those of the trained model, exactly.
"""

import argparse
import io
import os
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

import mmslora
from mmslora.models import load_adapter, save_adapter
from mmslora.models.adapter_io import CONFIG_NAME, WEIGHTS_NAME
from mmslora.utils.config import build_model_from_config, disable_pretrained, load_config


def verify_adapter(config: str, trained, adapter_file: str, cfg_options=None) -> int:
    """Build CONFIG with its pretrained backbone, load ``adapter_file``, and check that
    every tensor equals the trained model's; return how many tensors were compared."""
    model = build_model_from_config(load_config(config, cfg_options), init_weights=True)
    load_adapter(model, adapter_file)
    want = trained.state_dict()
    got = model.state_dict()
    differ = [k for k, v in want.items() if not torch.equal(v, got[k])]
    if differ:
        raise AssertionError(
            f'{len(differ)} tensors differ after loading the adapter onto '
            f'the pretrained model, e.g. {differ[:3]}: the frozen backbone '
            f'of the checkpoint is not the config\'s pretrained backbone.'
        )
    return len(want)


def written_bytes(out: str) -> int:
    """The size of the adapter files at ``out`` (a directory or a ``.pth``)."""
    if osp.isdir(out):
        return sum(osp.getsize(osp.join(out, name)) for name in (WEIGHTS_NAME, CONFIG_NAME))
    return osp.getsize(out)


def export_adapter(
    config: str, checkpoint: str, out: str, cfg_options=None, verify: bool = False
) -> dict:
    """Export; return ``dict(meta, checkpoint_bytes, weights_bytes, adapter_bytes)``
    (``weights_bytes``: the model's full state dict serialised, for the size ratio;
    ``adapter_bytes``: both adapter files)."""
    cfg = disable_pretrained(load_config(config, cfg_options))
    model = build_model_from_config(cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    meta = save_adapter(
        model,
        out,
        extra_meta=dict(config=os.path.basename(config), source=os.path.basename(checkpoint)),
    )
    if verify:
        verify_adapter(config, model, out, cfg_options)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return dict(
        meta=meta,
        checkpoint_bytes=os.path.getsize(checkpoint),
        weights_bytes=buffer.tell(),
        adapter_bytes=written_bytes(out),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('out')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument(
        '--verify',
        action='store_true',
        help='load the file onto the pretrained model and check that every '
        'tensor equals the trained one (needs the pretrained weights)',
    )
    args = parser.parse_args(argv)
    result = export_adapter(args.config, args.checkpoint, args.out, args.cfg_options, args.verify)
    if args.verify:
        print(
            'verified: the pretrained model + adapter file equals the trained model, '
            'tensor for tensor'
        )
    size = result['adapter_bytes']
    print(
        f'mmslora {mmslora.__version__}: wrote {args.out}: {size:,d} bytes = '
        f'{size / result["weights_bytes"]:.3f} x the full model weights '
        f'({result["weights_bytes"]:,d} bytes), '
        f'{size / result["checkpoint_bytes"]:.3f} x the training checkpoint '
        f'({result["checkpoint_bytes"]:,d} bytes, with optimizer state)'
    )
