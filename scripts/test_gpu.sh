#!/usr/bin/env bash
# The GPU leg (`make test-gpu`, docs/gpu.md), on one CUDA GPU, in under 8 minutes:
#
#   1. checks that torch sees a GPU and that mmcv's ops run on it (stops with the fix
#      otherwise, exit status 2);
#   2. pytest's CUDA leg: the tests that take the `device` fixture, on cuda (fused
#      adapter against its layer-by-layer reference, fast path against plain autograd,
#      compilation, AMP steps of every method, the methods' training steps), and the
#      tests marked `cuda` (inductor-compiled AMP steps, AmpOptimWrapper training a tiny
#      Mask R-CNN in the Runner);
#   3. benchmarks/cost.py --device cuda: R-50 and ViT-B eager, every method (bf16
#      autocast, batch 32 at 224 px); R-50 compiled, full fine-tuning and MSLoRA.
#
# Tables and logs go to $MMSLORA_GPU_RESULTS (default benchmarks/results/gpu/):
# pytest.log, eager/ and compiled/ (cost.md and cost.json each).
#
# Environment: MMSLORA_PYTHON (default .venv/bin/python, else python3): a Python with
# torch (CUDA), mmcv 2.1.0 built with CUDA ops (scripts/setup_env.sh does this where a
# GPU and nvcc are present), the OpenMMLab stack and mmslora; MMSLORA_GPU_RESULTS.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -n "${MMSLORA_PYTHON:-}" ]]; then
  PY=$MMSLORA_PYTHON
elif [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
fi
RESULTS=${MMSLORA_GPU_RESULTS:-benchmarks/results/gpu}
export PYTHONUNBUFFERED=1

say() { printf '[test-gpu] %s\n' "$*"; }

say "checking CUDA with $PY"
if ! "$PY" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f'[test-gpu] no CUDA GPU: torch {torch.__version__} (built for CUDA '
             f'{torch.version.cuda}) sees none. The GPU leg needs one GPU; '
             'on a CPU machine run `make test`.')
import mmcv
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]], device='cuda')
try:
    nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)
except (RuntimeError, NotImplementedError) as error:
    sys.exit(f'[test-gpu] mmcv {mmcv.__version__} has no CUDA ops ({error}). Rebuild it '
             'with FORCE_CUDA=1 (scripts/setup_env.sh does where nvcc is on the PATH; '
             'docs/gpu.md).')
print(f'[test-gpu] torch {torch.__version__}, {torch.cuda.get_device_name()}, '
      f'mmcv {mmcv.__version__} with CUDA ops')
PY
then
  exit 2
fi

mkdir -p "$RESULTS"
START=$SECONDS
say "pytest: the CUDA leg (-m 'device or cuda' --device cuda)"
set -o pipefail
timeout 300 "$PY" -m pytest tests --device cuda -m 'device or cuda' -q -p no:cacheprovider \
  2>&1 | tee "$RESULTS/pytest.log"
say "pytest took $((SECONDS - START)) s"

say "cost.py --device cuda: R-50 and ViT-B, every method, eager"
timeout 120 "$PY" benchmarks/cost.py --device cuda --models R-50 ViT-B --rounds 5 \
  --out "$RESULTS/eager"
say "cost.py --device cuda --compile: R-50, full fine-tuning and MSLoRA (fast path on)"
timeout 180 "$PY" benchmarks/cost.py --device cuda --compile --models R-50 \
  --methods full mslora --fast-path on --rounds 5 --out "$RESULTS/compiled"
say "done in $((SECONDS - START)) s; results in $RESULTS"
