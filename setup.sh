#!/usr/bin/env bash
# Create .venv with everything taskspace needs (CPU torch by default; see README for GPU).
# Usage: bash setup.sh            # runtime + test dependencies
#        TASKSPACE_EXTRAS=test,bench bash setup.sh   # also minicons for benchmarks/
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
# pip prints a line per package (no -q), so a first setup shows progress while it downloads
PIP=(.venv/bin/python -m pip install --progress-bar off --disable-pip-version-check)
# pip is silent while it unpacks and installs (close to a minute for torch and for the kit's
# dependencies): a heartbeat line every 20 s says the setup is alive
pip_with_heartbeat() {
  local what="$1"; shift
  ( start=$SECONDS; while sleep 20; do echo "taskspace: still installing $what ($((SECONDS - start)) s)"; done ) &
  local beat=$!
  local status=0
  "${PIP[@]}" "$@" | { grep -v "^Requirement already satisfied" || true; } || status=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$status"
}
if [ ! -x .venv/bin/python ]; then
  echo "taskspace: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so that the range in pyproject.toml is already satisfied and pip never pulls
# a multi-GB CUDA build on a CPU machine. GPU users install their CUDA torch into .venv beforehand
# and set TASKSPACE_TORCH=skip.
if [ "${TASKSPACE_TORCH:-2.13.0}" != "skip" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "taskspace: installing torch ${TASKSPACE_TORCH:-2.13.0} (CPU build)"
  pip_with_heartbeat torch "torch==${TASKSPACE_TORCH:-2.13.0}"
fi
echo "taskspace: installing the kit and its dependencies (.[${TASKSPACE_EXTRAS:-test}])"
pip_with_heartbeat "the kit's dependencies" -e ".[${TASKSPACE_EXTRAS:-test}]"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "taskspace: environment ready in .venv"
