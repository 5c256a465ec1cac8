#!/usr/bin/env bash
# Every GPU measurement in one call, on a machine with torch + CUDA that may lack
# mmsegmentation, mmengine and mmcv and has no network (wheels from .whl/, made by
# tools/fetch_gpu_wheels.sh). ViT-L + MLA, 768x768, batch 8:
#   1. eager variants: stock mmseg fp32, the plugin defaults (fused attention + bf16),
#      proposed, + fused optimizer, + channels-last heads and deferred log sync, + the
#      fast loss path; then a piece-by-piece profile of one step (with the loss path,
#      mmseg's against the fast one);
#   2. end to end: tools/train.py on the shipped baseline and proposed configs with
#      synthetic 1024x2048 Cityscapes data (made in the background during part 1),
#      8 workers, 20 iterations, then slide validation; baseline/proposed agreement at
#      step 0;
#   3. compiled segmentor forward (CompileModelHook) with the fast loss path, baseline
#      and proposed, and baseline without it, in the time kept for it.
# Each part logs and continues on failure; JSON is written as results arrive.
#
#   bash tools/benchmark_gpu.sh [--no-e2e] [--no-compile]
#
# PPENC_GPU_BUDGET (seconds, default 420) bounds the whole run; parts 1 and 2 stop early
# enough to leave part 3 its share. PPENC_GPU_DRYRUN=1 runs the same steps on the CPU at
# toy sizes (tiny configs), to check the script itself. Output goes to $OUT when set, else
# work_dirs/benchmark/: benchmarks.json + benchmarks.txt (merged), the parts (env.json,
# bench_eager.*, bench_compile.*, e2e.*), nvidia-smi.txt.
set -uo pipefail
START=$(date +%s)
BUDGET="${PPENC_GPU_BUDGET:-420}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WHL="${WHL_DIR:-$ROOT/.whl}"
SCRATCH="$(mktemp -d -t ppenc-gpu.XXXXXX)"
SITE="${PPENC_SITE:-$SCRATCH/site}"
DEST="${OUT:-$ROOT/work_dirs/benchmark}"
mkdir -p "$DEST"
E2E=1
COMPILE=1
for arg in "$@"; do
  case "$arg" in
    --no-e2e) E2E=0 ;;
    --no-compile) COMPILE=0 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "benchmark_gpu: unknown option $arg (expected --no-e2e, --no-compile)" >&2
       exit 2 ;;
  esac
done
left() { echo $(( START + BUDGET - $(date +%s) )); }
say() { echo "benchmark_gpu [$(( $(date +%s) - START )) s]: $*"; }

if "$PY" -c "import mmseg, mmengine, mmcv" 2>/dev/null; then
  say "using the installed mmseg/mmengine/mmcv"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
    echo "benchmark_gpu: mmseg/mmengine/mmcv are not installed and $WHL has no wheels;" \
         "run 'bash tools/fetch_gpu_wheels.sh' on a machine with network and carry .whl/" >&2
    exit 2
  fi
  "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check \
    --target "$SITE" "$WHL"/*.whl || { echo "benchmark_gpu: wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  say "installed $(ls "$WHL"/*.whl | wc -l) wheels into $SITE"
fi

# Fail early, naming what is missing, instead of deep inside an import.
"$PY" - <<'EOF' || exit 2
import importlib, os, sys
need = {'torch': None, 'numpy': None, 'cv2': 'bash tools/fetch_gpu_wheels.sh --with-opencv',
        'scipy': 'bash tools/fetch_gpu_wheels.sh --with-scipy', 'yaml': 'PyYAML',
        'PIL': 'Pillow', 'mmseg': None, 'mmengine': None, 'mmcv': None, 'rich': None,
        'ftfy': None, 'regex': None, 'mmseg_ppenc': None}
missing = []
for mod, fix in need.items():
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001  (report every kind of import failure)
        missing.append(f'{mod} ({type(e).__name__}: {e})' + (f' -> {fix}' if fix else ''))
if missing:
    sys.exit('benchmark_gpu: missing modules:\n  ' + '\n  '.join(missing))
import torch
if not torch.cuda.is_available() and os.environ.get('PPENC_GPU_DRYRUN') != '1':
    sys.exit('benchmark_gpu: torch.cuda.is_available() is False; this script needs a GPU.')
EOF

nvidia-smi > "$DEST/nvidia-smi.txt" 2>&1 || true
DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
DRIVER="$DRIVER" "$PY" - "$DEST/env.json" <<'EOF' || true
import json, os, platform, sys, torch
gpu = torch.cuda.is_available()
d = dict(gpu=torch.cuda.get_device_name() if gpu else 'none (dry run on the CPU)',
         driver=os.environ.get('DRIVER') or None,
         torch=torch.__version__, cuda=torch.version.cuda,
         cudnn=torch.backends.cudnn.version(), python=platform.python_version(),
         gpu_memory_gib=(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                         if gpu else None),
         cpu_count=os.cpu_count())
for m in ('mmseg', 'mmengine', 'mmcv', 'numpy'):
    try:
        d[m] = __import__(m).__version__
    except Exception as e:  # noqa: BLE001
        d[m] = f'unavailable: {e}'
json.dump(d, open(sys.argv[1], 'w'), indent=2)
print('benchmark_gpu:', ', '.join(f'{k} {v}' for k, v in d.items()))
EOF

DRY="${PPENC_GPU_DRYRUN:-0}"
if [ "$DRY" = 1 ]; then
  say "DRY RUN on the CPU at toy sizes: the figures mean nothing"
  DEV=cpu; IMG=(--height 64 --width 128)
  BENCH=(tools/benchmark.py --device cpu --arch tiny --decoder mla --size 32 --batch 2
         --stock-batches 2 --steps 1 --warmup 1)
  CFGS=(--configs configs/ppenc/tiny/setr_tiny_mla_synthetic_baseline.py
        configs/ppenc/tiny/setr_tiny_mla_synthetic_proposed.py)
  E2E_SIZE=(--iters 4 --batch 2 --workers 2 --log-interval 2)
else
  DEV=cuda; IMG=(--height 1024 --width 2048)
  # Stock fp32 at batch 8 peaks at about 101 GiB: on smaller cards (an 80 GB H100) it
  # runs at batch 4 (about 52 GiB), its best batch there.
  GIB="$("$PY" -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))" 2>/dev/null || echo 0)"
  STOCK_B=8; [ "$GIB" -lt 110 ] && STOCK_B=4
  say "GPU memory ${GIB} GiB: stock fp32 at batch $STOCK_B"
  BENCH=(tools/benchmark.py --device cuda --arch vit-l --decoder mla --size 768 --batch 8
         --stock-batches "$STOCK_B" --steps 8 --warmup 2)
  CFGS=()  # the shipped ViT-L + MLA baseline and proposed configs
  E2E_SIZE=(--iters 20 --batch 8 --workers 8 --log-interval 5)
fi

DATA="$SCRATCH/cityscapes"
KEY="$SCRATCH/bench.key"  # a throw-away key; never written to $DEST
if [ "$E2E" = 1 ]; then
  # CPU work, in the background while part 1 keeps the GPU busy.
  ( "$PY" tools/keygen.py "$KEY" >/dev/null &&
    "$PY" tools/make_synthetic_cityscapes.py "$DATA" --train 16 --val 4 \
      "${IMG[@]}" ) > "$DEST/e2e_data.log" 2>&1 &
  DATA_PID=$!
fi

# Seconds kept for the later parts: three torch.compile runs of ViT-L (each compiles
# for up to a minute), and two short training runs + the step-0 check.
KEEP3=$(( COMPILE ? 165 : 0 ))
KEEP2=$(( E2E ? 100 : 0 ))
cap() { local t=$(( $(left) - $2 )); echo $(( t < $1 ? t : $1 )); }

T1=$(cap 140 $(( KEEP2 + KEEP3 + 10 )))
say "part 1: eager variants + profile (up to $T1 s)"
timeout -k 10 "$T1" "$PY" "${BENCH[@]}" --sections train profile \
  --variants stock baseline proposed baseline+F baseline+FCD baseline+FCDL \
  --profile-variant baseline+FDL --time-budget $(( T1 - 30 )) \
  --out "$DEST/bench_eager.json" > "$DEST/bench_eager.txt" 2>&1
say "part 1 exit $? (bench_eager.txt)"; tail -n 40 "$DEST/bench_eager.txt"

if [ "$E2E" = 1 ]; then
  wait "$DATA_PID"; DATA_RC=$?
  say "synthetic data exit $DATA_RC: $(tail -n 1 "$DEST/e2e_data.log")"
  T2=$(cap 110 $(( KEEP3 + 5 )))
  if [ "$DATA_RC" = 0 ] && [ "$T2" -gt 60 ]; then
    say "part 2: end to end (up to $T2 s)"
    RUN_T=$(( (T2 - 25) / 2 ))
    PPENC_DATA_ROOT="$DATA/" timeout -k 10 "$T2" "$PY" tools/benchmark_e2e.py \
      ${CFGS[@]+"${CFGS[@]}"} --data-root "$DATA" --work-dir "$SCRATCH/e2e" \
      --key-file "$KEY" "${E2E_SIZE[@]}" --run-timeout "$RUN_T" --agreement-images 2 \
      --device "$DEV" --out "$DEST/e2e.json" > "$DEST/e2e.txt" 2>&1
    say "part 2 exit $? (e2e.txt)"; grep -E "^e2e|^  " "$DEST/e2e.txt" | tail -n 20
  else
    say "part 2 skipped (data exit $DATA_RC, $T2 s left)"
  fi
fi

if [ "$COMPILE" = 1 ]; then
  T3=$(( $(left) - 15 ))
  if [ "$T3" -gt 60 ]; then
    say "part 3: compiled variants (up to $T3 s)"
    timeout -k 10 "$T3" "$PY" "${BENCH[@]}" --sections train \
      --variants baseline+FDL+M proposed+FDL+M baseline+FD+M \
      --variant-budget 75 --time-budget $(( T3 - 10 )) \
      --out "$DEST/bench_compile.json" > "$DEST/bench_compile.txt" 2>&1
    say "part 3 exit $? (bench_compile.txt)"; grep -E "^  " "$DEST/bench_compile.txt" | tail -n 20
  else
    say "part 3 skipped ($T3 s left)"
  fi
fi

"$PY" tools/gpu_report.py "$DEST" > /dev/null 2>&1 || say "merging failed"
cat "$DEST/benchmarks.txt" 2>/dev/null
say "done; results in $DEST"
rm -rf "$SCRATCH"
