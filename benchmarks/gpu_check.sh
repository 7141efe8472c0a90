#!/usr/bin/env bash
# The first GPU machine's checks (under 8 minutes on one H100 or H200, nothing downloaded); see benchmarks/gpu_check.py.
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
# The wheels `make gpu-bundle` downloaded (tools/gpu_bundle.py), installed without an index into a
# temporary folder ahead of the image's own packages; SPT_GPU_BUNDLE names another bundle folder.
bundle="${SPT_GPU_BUNDLE:-$repo/gpu_bundle}"
site=""
if compgen -G "$bundle/wheels/*.whl" > /dev/null; then
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  "$python" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$site" "$bundle"/wheels/*.whl
fi
if [[ -d "$bundle/tokenizers" ]]; then export SPT_TOKENIZERS="$bundle/tokenizers"; fi
export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" SPT_GPU_BUNDLE_SITE="$site" \
  HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
timeout "${GPU_CHECK_TIMEOUT_S:-570}" "$python" "$repo/benchmarks/gpu_check.py" "$@"
