"""Show where the MSLoRA adapters shift the feature energy: one PNG per stage.

    python tools/analysis_tools/visualize_reweighting.py CONFIG CHECKPOINT IMAGE
        [--out-dir DIR] [--size 256] [--all-blocks]

CHECKPOINT is a training checkpoint or adapter files (a directory or ``.pth`` written by
tools/export_adapter.py; then the backbone's pretrained init_cfg of CONFIG is loaded). For the last block of
each stage the figure shows the image, ||F|| and ||F + H(F)|| (L2 over channels), the
relative change ||F + H(F)|| / ||F|| - 1 and the mean of the ``Trans`` gate.
"""

import argparse
import os
import os.path as osp

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import mmcv  # noqa: E402
import torch  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

import mmslora  # noqa: F401,E402
from mmslora.models import load_adapter, record_reweighting  # noqa: E402
from mmslora.models.reweighting import last_block_per_stage  # noqa: E402
from mmslora.utils.checkpoint import safe_torch_load  # noqa: E402
from mmslora.utils.config import build_model_from_config, load_config  # noqa: E402


def load_any(model, checkpoint: str) -> None:
    """Load a training checkpoint or adapter files (directory or legacy ``.pth``)."""
    if osp.isdir(checkpoint) or checkpoint.endswith('.safetensors'):
        load_adapter(model, checkpoint)
        return
    content = safe_torch_load(checkpoint, map_location='cpu')
    if isinstance(content, dict) and content.get('meta', {}).get('format', '').startswith(
        'mmslora-adapter'
    ):
        load_adapter(model, content)
    else:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)


def visualize(
    config: str,
    checkpoint: str,
    image: str,
    out_dir: str,
    size: int = 256,
    all_blocks: bool = False,
) -> list:
    """Write the figures; return their paths."""
    cfg = load_config(config)
    model = build_model_from_config(cfg, init_weights=True)
    load_any(model, checkpoint)
    model.eval()
    rgb = mmcv.imresize(mmcv.imread(image, channel_order='rgb'), (size, size))
    bgr = torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)
    data = model.data_preprocessor(dict(inputs=[bgr]), False)
    with torch.no_grad(), record_reweighting(model) as records:
        model.extract_feat(data['inputs'])
    names = list(records) if all_blocks else last_block_per_stage(records)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in names:
        rec = records[name]
        panels = [
            ('image', rgb, None),
            ('||F||', rec['before'], 'viridis'),
            ('||F + H(F)||', rec['after'], 'viridis'),
            ('relative change', rec['after'] / rec['before'].clamp_min(1e-6) - 1, 'coolwarm'),
        ]
        if 'gate' in rec:
            panels.append(('mean Trans(F)', rec['gate'], 'magma'))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
        for ax, (title, value, cmap) in zip(axes, panels):
            shown = value if cmap is None else value.cpu().numpy()
            # the diverging map is centred: white = unchanged, red = amplified, blue = damped
            limit = max(abs(float(shown.min())), abs(float(shown.max())), 1e-6)
            scale = dict(vmin=-limit, vmax=limit) if cmap == 'coolwarm' else {}
            im = ax.imshow(shown, cmap=cmap, **scale)
            if cmap is not None:
                fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(title)
            ax.axis('off')
        fig.suptitle(f'{name}  ({tuple(rec["before"].shape)} grid)')
        fig.tight_layout()
        path = osp.join(out_dir, f'reweighting_{name.replace(".", "_")}.png')
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('image')
    parser.add_argument('--out-dir', default='work_dirs/reweighting')
    parser.add_argument('--size', type=int, default=256, help='square input size')
    parser.add_argument('--all-blocks', action='store_true', help='a figure per block')
    args = parser.parse_args(argv)
    for path in visualize(
        args.config, args.checkpoint, args.image, args.out_dir, args.size, args.all_blocks
    ):
        print(path)


if __name__ == '__main__':
    main()
