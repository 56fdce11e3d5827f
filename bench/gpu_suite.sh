#!/usr/bin/env bash
# Every bench's GPU configuration in one call, one markdown table (bench/gpu_suite.py). Planned: < 9 min on one H100.
#   bash bench/gpu_suite.sh            # CUDA, SD1.5 size -> bench/gpu_suite.md
#   bash bench/gpu_suite.sh --smoke    # the same code paths on CPU, tiny sizes (run by tests/test_gpu_suite.py)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python3
out=gpu_suite.md
for a in "$@"; do [ "$a" = "--smoke" ] && out="${TMPDIR:-/tmp}/gpu_suite_smoke.md"; done
exec timeout 540 "$PY" gpu_suite.py --out "$out" "$@"
