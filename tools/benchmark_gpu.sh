#!/usr/bin/env bash
# The real-size benchmark on a GPU machine (torch + CUDA) that may lack mmsegmentation,
# mmengine and mmcv and has no network: installs the wheels from .whl/ (made by
# tools/fetch_gpu_wheels.sh) into a scratch folder, then runs
#   tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8 --compile
# Extra arguments go to tools/benchmark.py (e.g. --steps 5, --sections train).
# PPENC_BENCH_COMPILE=0 drops the torch.compile variant. Writes benchmark_gpu.{json,txt}
# and nvidia-smi.txt to $OUT when set, else to work_dirs/benchmark/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WHL="${WHL_DIR:-$ROOT/.whl}"
SITE="${PPENC_SITE:-$(mktemp -d -t ppenc-site.XXXXXX)}"
DEST="${OUT:-$ROOT/work_dirs/benchmark}"
mkdir -p "$DEST"

if "$PY" -c "import mmseg, mmengine, mmcv" 2>/dev/null; then
  echo "benchmark_gpu: using the installed mmseg/mmengine/mmcv"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
    echo "benchmark_gpu: mmseg/mmengine/mmcv are not installed and $WHL has no wheels;" \
         "run 'bash tools/fetch_gpu_wheels.sh' on a machine with network and carry .whl/" >&2
    exit 2
  fi
  rm -rf "$SITE"
  "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check \
    --target "$SITE" "$WHL"/*.whl
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "benchmark_gpu: installed $(ls "$WHL"/*.whl | wc -l) wheels into $SITE"
fi

# Fail early, naming what is missing, instead of deep inside an import.
"$PY" - <<'EOF'
import importlib, sys
need = {'torch': None, 'numpy': None, 'cv2': 'bash tools/fetch_gpu_wheels.sh --with-opencv',
        'scipy': 'bash tools/fetch_gpu_wheels.sh --with-scipy', 'yaml': 'PyYAML',
        'PIL': 'Pillow', 'mmseg': None, 'mmengine': None, 'mmcv': None, 'rich': None,
        'ftfy': None, 'regex': None}
missing = []
for mod, fix in need.items():
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001  (report every kind of import failure)
        missing.append(f'{mod} ({type(e).__name__}: {e})' + (f' -> {fix}' if fix else ''))
if missing:
    sys.exit('benchmark_gpu: missing modules:\n  ' + '\n  '.join(missing))
import torch
if not torch.cuda.is_available():
    sys.exit('benchmark_gpu: torch.cuda.is_available() is False; this script needs a GPU.')
print(f'benchmark_gpu: torch {torch.__version__} on {torch.cuda.get_device_name()}')
EOF

nvidia-smi > "$DEST/nvidia-smi.txt" 2>&1 || true
COMPILE=(--compile)
[ "${PPENC_BENCH_COMPILE:-1}" = "0" ] && COMPILE=()
"$PY" tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8 \
  ${COMPILE[@]+"${COMPILE[@]}"} --out "$DEST/benchmark_gpu.json" "$@" \
  2>&1 | tee "$DEST/benchmark_gpu.txt"
