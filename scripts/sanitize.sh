#!/usr/bin/env bash
# Sanitizer suite: builds sqfx._C with AddressSanitizer + UBSan (SQFX_SANITIZE=1 in setup.py)
# into a private copy of the tree, build/sanitize/tree, so the normal build is untouched, then
# runs the op tests and the bounded fuzz against it.
#
#   scripts/sanitize.sh                       # default test set (below)
#   scripts/sanitize.sh tests/test_foo.py -k bar   # any pytest arguments instead
#   SQFX_FUZZ_PROFILE=long scripts/sanitize.sh tests/test_fuzz_packed.py   # long fuzz under ASan
#
# PYTHON picks the interpreter (default: $SQFX_VENV/bin/python, SQFX_VENV defaulting to .venv,
# else python3); it needs torch, pytest and hypothesis. Python itself is not instrumented, so the ASan runtime is
# preloaded; leak checking is off (CPython and torch keep allocations alive at exit).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  venv="$root/${SQFX_VENV:-.venv}"  # scripts/setup.sh's venv (.ci/run sets SQFX_VENV=.venv-ci)
  if [[ -x "$venv/bin/python" ]]; then PYTHON="$venv/bin/python"; else PYTHON=python3; fi
fi
dest="$root/build/sanitize/tree"

# 1. A private copy of the tracked + untracked-but-not-ignored files (sources and tests).
rm -rf "$dest"
mkdir -p "$dest"
(cd "$root" && git ls-files -z --cached --others --exclude-standard) \
  | (cd "$root" && xargs -0 cp --parents -t "$dest" 2>/dev/null || true)
for f in setup.py csrc sqfx tests; do
  [[ -e "$dest/$f" ]] || { echo "sanitize.sh: $f missing from the copy" >&2; exit 2; }
done

# 2. The sanitized build, in place inside the copy.
(cd "$dest" && SQFX_SANITIZE=1 "$PYTHON" setup.py -q build_ext --inplace >build.log 2>&1) \
  || { cat "$dest/build.log" >&2; echo "sanitize.sh: sanitized build failed" >&2; exit 2; }

libasan=$(${CXX:-g++} -print-file-name=libasan.so)
[[ -f "$libasan" ]] || { echo "sanitize.sh: libasan.so not found ($libasan)" >&2; exit 2; }

# libstdc++ too: python does not link it, and without it ASan's __cxa_throw interceptor
# finds no real __cxa_throw and aborts on the first C++ exception (every rejected input).
libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so)
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

cd "$dest"
# The copy must be what gets imported, not an editable install of the main tree.
"$PYTHON" - <<'PY'
import os, sqfx
so = [p for p in os.listdir(os.path.dirname(sqfx.__file__)) if p.startswith("_C")]
assert os.path.dirname(sqfx.__file__) == os.path.join(os.getcwd(), "sqfx"), sqfx.__file__
print(f"sanitize.sh: testing {sqfx.__file__} ({', '.join(so)}), ASan+UBSan")
PY

if [[ $# -eq 0 ]]; then
  shopt -s nullglob
  set -- tests/test_op_*.py tests/test_numeric_limits.py tests/test_concurrency.py tests/test_fuzz_packed.py \
    tests/test_fuzz_archives.py tests/test_untrusted_archives.py
fi
# --capture=sys: sanitizer reports go straight to fd 2, which pytest would otherwise swallow
# when the process halts.
exec "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys "$@"
