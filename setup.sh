#!/usr/bin/env bash
# Create .venv with everything taskspace needs (CPU torch by default; see README for GPU).
# Usage: bash setup.sh            # runtime + test dependencies
#        TASKSPACE_EXTRAS=test,bench bash setup.sh   # also minicons for benchmarks/
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
# pip prints a line per package (no -q), so a first setup shows progress while it downloads
PIP=(.venv/bin/python -m pip install --progress-bar off --disable-pip-version-check)
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
  "${PIP[@]}" "torch==${TASKSPACE_TORCH:-2.13.0}" | { grep -v "^Requirement already satisfied" || true; }
fi
echo "taskspace: installing the kit and its dependencies (.[${TASKSPACE_EXTRAS:-test}])"
"${PIP[@]}" -e ".[${TASKSPACE_EXTRAS:-test}]" | { grep -v "^Requirement already satisfied" || true; }
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "taskspace: environment ready in .venv"
