#!/usr/bin/env bash
# One command does all set-up on a fresh machine with Python 3.10+ and pip, then runs:
#   bash run.sh demo         # Tune-A-Video end to end on a built-in tiny random model (writes a new outputs/demo_NNNNN/)
#   bash run.sh test         # the test suite (what CI runs)
#   bash run.sh self-check   # convert + inflate a tiny model and print what was done
#   bash run.sh cli ARGS...  # the headless CLI, e.g. cli tune-a-video --checkpoint ... (see README)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TUNEVIDEO_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  # A CPU-capable torch; pinned so pip does not pick a newer multi-GB build when a local wheel exists.
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.1"
fi
STAMP="$VENV/.tunevideo-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  "$PY" -m pip install -q -e ".[dev]"
  # The CLIP BPE vocabulary for the headless CLI without a ComfyUI checkout: open_clip ships it as a data file.
  # --no-deps: only the file is read (the package is never imported), and its torchvision pin would replace torch.
  "$PY" -m pip install -q --no-deps "open_clip_torch>=2.20" \
    || echo "run.sh: open_clip_torch not installed; the CLI then needs --tokenizer or COMFYUI_PATH" >&2
  touch "$STAMP"
fi
cmd="${1:-demo}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec "$PY" -m tunevideo demo "$@" ;;
  self-check) exec "$PY" -m tunevideo self-check "$@" ;;
  cli) exec "$PY" -m tunevideo "$@" ;;
  test)
    set +e
    "$PY" -m pytest -q "$@"
    rc=$?
    if [ "$rc" -eq 5 ]; then echo "run.sh: pytest collected no tests; failing" >&2; exit 1; fi
    exit "$rc" ;;
  *) echo "usage: bash run.sh {demo|test|self-check|cli ARGS}" >&2; exit 2 ;;
esac
