"""tools/train.py, tools/test.py and the adapter export, run as a user runs them: in a
subprocess, on the embedded data, with the real pretrained EfficientNet-Lite0."""

import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.utils import digit_version

from mmslora.utils.logs import latest_metrics, run_logs
from mmslora_testing import assert_adapters_trained, assert_share_of

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET = 'configs/demo/mask-rcnn_effnet-lite0-mslora_fpn_nuclei.py'
SEG = 'configs/demo/upernet_effnet-lite0-mslora_nuclei-256x256.py'
CLS = 'configs/demo/effnet-lite0-mslora_fashion-mnist.py'
CLS_COMPILED = 'configs/demo/effnet-lite0-mslora-compile_fashion-mnist.py'


def run_tool(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def iters_options(n):
    return [
        f'train_cfg.max_iters={n}',
        f'train_cfg.val_interval={n}',
        f'default_hooks.checkpoint.interval={n}',
        'default_hooks.checkpoint.max_keep_ckpts=3',
    ]


def det_options(root):
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={root}annotations/instances_val.json',
        f'test_evaluator.ann_file={root}annotations/instances_val.json',
    ]


@pytest.fixture(scope='module')
def det_run(nuclei_root, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('det'))
    log = run_tool(
        'tools/train.py',
        DET,
        '--work-dir',
        work,
        '--cfg-options',
        *iters_options(2),
        *det_options(nuclei_root),
    )
    return work, log


def test_detection_trains_and_validates(det_run):
    work, log = det_run
    assert osp.exists(osp.join(work, 'iter_2.pth'))
    assert 'MSLoRA parameter report' in log and 'trainable / backbone' in log
    assert (
        'load model from: efficientnet-lite0://imagenet' in log
        or 'efficientnet-lite0://imagenet' in log
    )
    assert_adapters_trained(osp.join(work, 'iter_2.pth'))
    assert set(first_validation(work)) >= {'coco/bbox_mAP', 'coco/segm_mAP'}


def first_validation(work):
    """The COCO metrics of the first validation of the first run in ``work`` (the
    2-iteration run of ``det_run``; a resumed run logs into a newer folder)."""
    for path in reversed(run_logs(work)):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        for record in records:
            if 'coco/bbox_mAP' in record:
                return {k: v for k, v in record.items() if k.startswith('coco/')}
    raise AssertionError(f'no validation under {work}')


def test_resume_continues_the_run(det_run, nuclei_root):
    work, _ = det_run
    log = run_tool(
        'tools/train.py',
        DET,
        '--work-dir',
        work,
        '--resume',
        '--cfg-options',
        *iters_options(4),
        *det_options(nuclei_root),
    )
    assert 'resumed epoch: 0, iter: 2' in log
    assert osp.exists(osp.join(work, 'iter_4.pth'))
    from mmslora.utils.checkpoint import safe_torch_load

    assert safe_torch_load(osp.join(work, 'iter_4.pth'))['meta']['iter'] == 4


def test_export_adapter_round_trip_is_exact(det_run, nuclei_root, tmp_path):
    work, _ = det_run
    out = str(tmp_path / 'adapter')
    log = run_tool('tools/export_adapter.py', DET, osp.join(work, 'iter_2.pth'), out, '--verify')
    assert 'verified' in log
    from safetensors import safe_open

    with safe_open(osp.join(out, 'adapter_model.safetensors'), 'pt') as f:
        keys = list(f.keys())
    with open(osp.join(out, 'adapter_config.json')) as f:
        config = json.load(f)
    assert config['format'] == 'mmslora-adapter-v2' and config['config'] == osp.basename(DET)
    assert config['wrappers']['backbone']['backbone'] == 'EfficientNetLite'
    assert not any('.backbone.backbone.' in k or k.startswith('backbone.backbone.') for k in keys)
    assert any(k.startswith('backbone.adapters.') for k in keys)
    assert osp.getsize(osp.join(out, 'adapter_model.safetensors')) < osp.getsize(
        osp.join(work, 'iter_2.pth')
    )
    # the adapter files drive the reweighting figures as a training checkpoint does
    image = sorted(glob.glob(osp.join(nuclei_root, 'images', 'val', '*.png')))[0]
    run_tool(
        'tools/analysis_tools/visualize_reweighting.py',
        DET,
        out,
        image,
        '--out-dir',
        str(tmp_path / 'maps'),
    )
    assert len(glob.glob(str(tmp_path / 'maps' / '*.png'))) == 7


def test_test_tool_evaluates_and_paints(det_run, nuclei_root, tmp_path):
    work, _ = det_run
    run_tool(
        'tools/test.py',
        DET,
        osp.join(work, 'iter_2.pth'),
        '--work-dir',
        str(tmp_path),
        '--show-dir',
        'painted',
        '--cfg-options',
        *det_options(nuclei_root),
    )
    assert glob.glob(osp.join(str(tmp_path), '*', 'painted', '*.png'))
    # the same checkpoint on the same images: the training run's validation, exactly
    tested = latest_metrics(str(tmp_path), 'coco/segm_mAP')
    assert {k: v for k, v in tested.items() if k.startswith('coco/')} == first_validation(work)


def test_segmentation_trains_and_validates(nuclei_root, tmp_path):
    seg = [
        f'train_dataloader.dataset.data_root={nuclei_root}',
        f'val_dataloader.dataset.data_root={nuclei_root}',
        f'test_dataloader.dataset.data_root={nuclei_root}',
    ]
    run_tool(
        'tools/train.py', SEG, '--work-dir', str(tmp_path), '--cfg-options', *iters_options(2), *seg
    )
    assert_adapters_trained(str(tmp_path / 'iter_2.pth'))
    record = latest_metrics(str(tmp_path), 'mIoU')
    # a class's IoU is at most its accuracy (its recall), so mIoU <= mAcc
    assert 0 <= record['mIoU'] <= record['mAcc'] <= 100


def cls_options(root):
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.dataset.indices=64',
        'val_dataloader.dataset.indices=64',
        'test_dataloader.dataset.indices=64',
        'train_dataloader.batch_size=8',
    ]


def test_classification_trains_and_validates(fashion_root, tmp_path):
    run_tool(
        'tools/train.py',
        CLS,
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *iters_options(2),
        *cls_options(fashion_root),
    )
    assert_adapters_trained(str(tmp_path / 'iter_2.pth'))
    # evaluated on exactly the 64 validation images of cls_options
    assert_share_of(latest_metrics(str(tmp_path), 'accuracy/top1')['accuracy/top1'], 64)


def test_method_switch_trains_and_tests_a_peer(fashion_root, tmp_path):
    """``--method mona``: the same config trains Mona; its checkpoint is evaluated with
    the same switch and refused, naming the mismatch, without it."""
    work, mona = str(tmp_path / 'train'), ['model.backbone.adapter.hidden_dim=16']
    log = run_tool(
        'tools/train.py',
        CLS,
        '--method',
        'mona',
        '--work-dir',
        work,
        '--cfg-options',
        *iters_options(2),
        *cls_options(fashion_root),
        *mona,
    )
    assert 'MonaAdapter' in log and 'trainable / backbone' in log
    ckpt = osp.join(work, 'iter_2.pth')
    log = run_tool(
        'tools/test.py',
        CLS,
        ckpt,
        '--method',
        'mona',
        '--work-dir',
        str(tmp_path / 'test'),
        '--cfg-options',
        *cls_options(fashion_root),
        *mona,
    )
    assert 'accuracy/top1' in log
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            'tools/test.py',
            CLS,
            ckpt,
            '--work-dir',
            str(tmp_path / 'refused'),
            '--cfg-options',
            *cls_options(fashion_root),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert 'does not fit the model (nothing was loaded)' in proc.stderr
    assert "adapter.type: checkpoint 'mmslora.MonaAdapter'" in proc.stderr


def test_count_params_tool_prints_the_report():
    out = run_tool('tools/analysis_tools/count_params.py', DET)
    assert 'trainable / backbone' in out and 'trainable params:' in out


def test_amp_on_cpu_is_refused_with_the_fix(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', DET, '--amp', '--work-dir', str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert '--amp needs a CUDA GPU' in proc.stderr and 'drop --amp' in proc.stderr


def test_visualize_reweighting_writes_a_figure_per_stage(det_run, nuclei_root, tmp_path):
    work, _ = det_run
    image = sorted(glob.glob(osp.join(nuclei_root, 'images', 'val', '*.png')))[0]
    out = run_tool(
        'tools/analysis_tools/visualize_reweighting.py',
        DET,
        osp.join(work, 'iter_2.pth'),
        image,
        '--out-dir',
        str(tmp_path),
    )
    pngs = sorted(glob.glob(osp.join(str(tmp_path), '*.png')))
    assert len(pngs) == 7  # one per EfficientNet-Lite stage with an adapter
    assert all(p in out for p in pngs)
    import mmcv

    picture = mmcv.imread(pngs[0])
    assert picture.ndim == 3 and picture.std() > 0


@pytest.mark.skipif(
    digit_version(torch.__version__) < digit_version('2.4.0'),
    reason='torch.compile of mmslora needs torch >= 2.4 (tests/test_models/test_compile.py)',
)
def test_compiled_config_trains(fashion_root, tmp_path):
    """The shipped config with ``compile=True``: mmengine compiles ``train_step`` and
    trains; the adapters' zero-started up-projections moved. Inherited by a user file
    with a constant learning rate: torch guards a compiled optimizer step on its float
    lr, so a schedule that changes it every iteration recompiles the step each time
    (upstream behaviour, docs/compile.md), which only costs time."""
    user_cfg = tmp_path / 'compiled_constant_lr.py'
    user_cfg.write_text(f"_base_ = ['{osp.join(ROOT, CLS_COMPILED)}']\nparam_scheduler = []\n")
    work = tmp_path / 'work'
    log = run_tool(
        'tools/train.py',
        str(user_cfg),
        '--work-dir',
        str(work),
        '--cfg-options',
        *iters_options(2),
        *cls_options(fashion_root),
        timeout=1500,
    )
    assert 'Model has been "compiled"' in log
    assert_adapters_trained(osp.join(str(work), 'iter_2.pth'))
    assert_share_of(latest_metrics(str(work), 'accuracy/top1')['accuracy/top1'], 64)
