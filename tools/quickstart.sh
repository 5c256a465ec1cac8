#!/usr/bin/env bash
# The main job on the built-in default: set up, make a key and the synthetic Cityscapes
# set, train the proposed method (tiny SETR-MLA, encrypted images, encrypted ViT) on the
# CPU, evaluate, and print aAcc / mIoU / mAcc.
#
#   bash tools/quickstart.sh            (PPENC_KEY_FILE / PPENC_DATA_ROOT are honoured)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY=.venv/bin/python
CONFIG=configs/ppenc/tiny/setr_tiny_mla_synthetic_proposed.py
WORK_DIR=${WORK_DIR:-work_dirs/quickstart}
export PPENC_KEY_FILE=${PPENC_KEY_FILE:-keys/quickstart.key}
export PPENC_DATA_ROOT=${PPENC_DATA_ROOT:-data/cityscapes/}

[ -f "$PPENC_KEY_FILE" ] || $PY tools/keygen.py "$PPENC_KEY_FILE"
[ -d "$PPENC_DATA_ROOT/leftImg8bit" ] || $PY tools/make_synthetic_cityscapes.py "$PPENC_DATA_ROOT"
if [ -d "$WORK_DIR" ]; then
  WORK_DIR="$WORK_DIR-$(date +%Y%m%d_%H%M%S)"  # never overwrite an earlier run
fi
$PY tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
CKPT=$(cat "$WORK_DIR/last_checkpoint")
$PY tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" 2>&1 | tail -n 1
echo "Work dir: $WORK_DIR (config dump, logs, checkpoints; key fingerprint in checkpoint meta)"
