"""bench/gpu_suite.sh --smoke: every phase of the GPU suite runs on CPU with tiny sizes, so the suite cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_smoke_writes_one_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "gpu_suite_smoke.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| phase")]
    phases = " ".join(rows)
    for name in ("Tune-A-Video tune", "Tune-A-Video invert", "Tune-A-Video sample", "Video-P2P", "Dreamix",
                 "MotionDirector", "CLIP scoring", "Long clip tune", "Long clip invert", "Long clip sample"):
        assert name in phases, table
    assert len(rows) == 10
