#!/usr/bin/env bash
# Training on a Slurm cluster, with mmsegmentation's interface:
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG [tools/train.py arguments...]
# From the environment: GPUS (tasks in total, default 4), GPUS_PER_NODE (default 4),
# CPUS_PER_TASK (default 5) and SRUN_ARGS (extra srun arguments, split on spaces).
# srun starts one task per GPU running tools/train.py with --launcher=slurm; mmengine
# takes rank and world size from Slurm's variables. PYTHON selects the interpreter
# (default: the project's .venv if present, else python). The key file is selected as
# for a local run (PPENC_KEY_FILE, which srun passes on to the tasks).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PARTITION JOB_NAME CONFIG [train.py arguments...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a EXTRA_SRUN_ARGS <<< "${SRUN_ARGS:-}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
set -x
PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${EXTRA_SRUN_ARGS[@]+"${EXTRA_SRUN_ARGS[@]}"} \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --launcher=slurm "${@:4}"
