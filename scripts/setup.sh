#!/usr/bin/env bash
# Creates the virtual environment (default .venv, or $SQFX_VENV) and installs sqfx into it,
# building the C++ op. torch is pinned to 2.13.0, the CPU wheel: an unpinned torch would pull
# a multi-GB CUDA build. Extra groups to install: $SQFX_EXTRAS (default "test").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SQFX_VENV:-.venv}"
extras="${SQFX_EXTRAS:-test}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade "pip>=23" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -m pip install -q torch==2.13.0 "setuptools>=64" wheel 2>&1 | grep -v "^WARNING: Location" || true
# --no-build-isolation: build against the torch just installed instead of a second copy.
"$venv/bin/python" -m pip install -q --no-build-isolation -e ".[$extras]" torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import torch, sqfx; print('sqfx', sqfx.__version__, 'on torch', torch.__version__)"
