#!/usr/bin/env bash
# Create .venv and install vaelab into it (editable). `--dev` adds the test/lint tools.
# torch is pinned to 2.13.0 here only so pip takes the CPU wheel that these machines carry
# instead of resolving a newer CUDA build; the package itself requires torch>=2.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import vaelab, torch; print(f'vaelab {vaelab.__version__} ready (torch {torch.__version__})')"
