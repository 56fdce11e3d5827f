"""Writing frames: H.264 MP4, animated WebP or GIF, and contact sheets; atomic, never overwriting silently.

Frames are ComfyUI-style ``[F, H, W, C]`` floats in 0..1 (C = 1, 3 or 4), as :mod:`.video_io` reads them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write

__all__ = ["write_video", "contact_sheet"]


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``[F, H, W, C]`` float 0..1 (C = 1, 3 or 4; alpha dropped) -> ``[F, H, W, 3]`` uint8."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [F, H, W, C] with C in 1, 3, 4, got {getattr(frames, 'shape', frames)}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one non-empty frame, got shape {tuple(frames.shape)}")
    x = frames.detach().float().clamp(0, 1)
    x = x.expand(-1, -1, -1, 3) if x.shape[-1] == 1 else x[..., :3]
    return np.ascontiguousarray((x * 255).round().to(torch.uint8).cpu().numpy())


def _write_mp4(arr: np.ndarray, tmp: str, fps: float) -> None:
    from fractions import Fraction

    import av

    h, w = arr.shape[1] // 2 * 2, arr.shape[2] // 2 * 2  # yuv420p needs even sizes
    if h < 2 or w < 2:
        raise ValueError(f"frames of {arr.shape[2]}x{arr.shape[1]} are too small for H.264 (need at least 2x2)")
    with av.open(tmp, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in arr:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")))
        out.mux(stream.encode())


def _write_pil(arr: np.ndarray, tmp: str, fps: float, fmt: str) -> None:
    images = [Image.fromarray(a) for a in arr]
    extra = {"lossless": False, "quality": 90} if fmt == "WEBP" else {}
    images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0, **extra)


def write_video(frames: torch.Tensor, path, fps: float, overwrite: bool = False) -> Path:
    """Write ``[F, H, W, C]`` frames in 0..1 as ``.mp4`` (H.264, yuv420p; odd sizes lose their last row/column),
    ``.webp`` (animated, quality 90) or ``.gif``, chosen by extension. Atomic; FileExistsError naming ``path`` if
    it exists and ``overwrite`` is False. Returns ``path``."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".mp4", ".webp", ".gif"):
        raise ValueError(f"{path.name}: unsupported video extension {ext!r}; use .mp4, .webp or .gif")
    try:
        rate = float(fps)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"fps={fps!r} must be a finite number > 0")
    fps = rate
    arr = _to_uint8(frames)
    if ext == ".mp4":
        return atomic_write(path, lambda tmp: _write_mp4(arr, tmp, fps), overwrite)
    return atomic_write(path, lambda tmp: _write_pil(arr, tmp, fps, ext[1:].upper()), overwrite)


def contact_sheet(frames: torch.Tensor, columns: int | None = None, path=None, overwrite: bool = False):
    """Grid of ``[F, H, W, C]`` frames (row-major, ``columns`` wide, default about square) as a PIL RGB image;
    also saved as PNG when ``path`` is given (atomic, no overwrite unless ``overwrite=True``)."""
    arr = _to_uint8(frames)
    f, h, w, _ = arr.shape
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns={columns} must be a positive integer or None")
    cols = min(columns or math.ceil(math.sqrt(f)), f)
    rows = math.ceil(f / cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "black")
    for i, a in enumerate(arr):
        sheet.paste(Image.fromarray(a), ((i % cols) * w, (i // cols) * h))
    if path is not None:
        atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"), overwrite)
    return sheet
