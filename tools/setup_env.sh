#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent).
#
#   bash tools/setup_env.sh
#
# Installs torch/torchvision (TORCH_SPEC, default the pinned versions), then this package
# in editable mode with its test and mim extras, under the constraints in
# requirements/constraints.txt. A second run with nothing changed takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
VENV="$ROOT/.venv"
STAMP="$VENV/.ppenc-setup"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3" >&2
  exit 1
fi
want=$(cat pyproject.toml requirements/constraints.txt tools/setup_env.sh | sha256sum | cut -d' ' -f1)
want="$want $TORCH_SPEC"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c 'import mmseg_ppenc' >/dev/null 2>&1; then
  echo "setup_env: .venv is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" 'setuptools>=77,<81' wheel
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_SPEC
"${PIP[@]}" -c requirements/constraints.txt -e '.[tests,mim]'
"$VENV/bin/python" -c 'import mmseg_ppenc, mmseg.models; print("setup_env: ready, mmseg_ppenc", mmseg_ppenc.__version__)'
echo "$want" > "$STAMP"
