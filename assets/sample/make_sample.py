"""Make the shipped sample clip from the shared data (run from the repository root).

    python assets/sample/make_sample.py ../shared/data/man-skiing.mp4
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunevideo.modules.video_io import read_video, write_video

OUT = Path(__file__).resolve().parent / "man-skiing-16f-128.mp4"

if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/man-skiing.mp4")
    frames, fps = read_video(source, start=0, count=16, stride=2, width=128, height=128)
    write_video(frames, OUT, fps)
