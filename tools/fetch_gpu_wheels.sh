#!/usr/bin/env bash
# Download the wheels that tools/benchmark_gpu.sh installs on a GPU machine that has
# torch (+ numpy, scipy, opencv, timm) but no mmsegmentation / mmengine / mmcv and no
# network. Run it here, where the package index is reachable; carry the folder along.
#
#   bash tools/fetch_gpu_wheels.sh [--with-opencv] [--with-scipy] [DEST]   (DEST: .whl)
#
# Targets CPython 3.12 on manylinux x86_64 (PYTHON_VERSION / PLATFORM override): the
# mm* packages are pure Python, but regex and wcwidth ship compiled wheels. A GPU
# machine without OpenCV or SciPy needs --with-opencv (opencv-python-headless, ~50 MB)
# or --with-scipy (~35 MB); both are checked by benchmark_gpu.sh before it runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PLATFORM="${PLATFORM:-manylinux2014_x86_64}"
DEST=""
EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --with-opencv) EXTRA+=("opencv-python-headless") ;;
    --with-scipy) EXTRA+=("scipy") ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "fetch_gpu_wheels: unknown option $arg (expected --with-opencv, --with-scipy)" >&2
        exit 2 ;;
    *) DEST="$arg" ;;
  esac
done
DEST="${DEST:-$ROOT/.whl}"
mkdir -p "$DEST"

# What mmseg 1.2.2, mmengine 0.10.7 and mmcv-lite 2.1.0 import at run time, beyond
# torch/numpy/scipy/opencv/Pillow/PyYAML/packaging (found with -X importtime on the
# benchmark). rich and its dependencies are included in case the machine lacks them.
PKGS=(
  "mmcv-lite==2.1.0" "mmsegmentation==1.2.2" "mmengine==0.10.7"
  addict yapf termcolor prettytable wcwidth platformdirs "setuptools<81" ftfy regex
  rich markdown-it-py mdurl pygments
)
"$PY" -m pip download --no-deps --only-binary=:all: --dest "$DEST" \
  --python-version "$PYTHON_VERSION" --implementation cp --platform "$PLATFORM" \
  "${PKGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
echo "fetch_gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
