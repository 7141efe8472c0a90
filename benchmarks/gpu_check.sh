#!/usr/bin/env bash
# The first GPU machine's checks (under 8 minutes on one H200, nothing downloaded); see benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh          # real sizes on the GPU; rows for docs/benchmarks.md in $OUT/gpu_check.md or stdout
#   benchmarks/gpu_check.sh --toy    # toy sizes on the CPU: checks the script itself in seconds
#
# PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_CHECK_TIMEOUT_S:-570}" "$python" "$repo/benchmarks/gpu_check.py" "$@"
