"""Reading clips the way Tune-A-Video samples its training video, and writing results.

Tune-A-Video (Wu et al., ICCV 2023) trains on ``n_sample_frames`` frames taken every ``sample_frame_rate`` source
frames from ``sample_start_idx``, resized to ``width x height``. Here frames are resized to *cover* the target and
centre-cropped, so the aspect ratio is kept. Frames are ComfyUI-style ``[F, H, W, C]`` float32 in 0..1.

Decoding uses PyAV (FFmpeg) and stops after the last needed frame. Writes are atomic (temp file + rename) and never
replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import atomic_write

logger = logging.getLogger(__name__)


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v <= 0 or v % 8:
            raise ValueError(f"{name}={v} must be a positive multiple of 8 (the VAE downsamples by 8)")


def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
        if not container.streams.video:
            raise ValueError("no video stream")
        return container
    except (av.error.FFmpegError, ValueError) as e:
        raise ValueError(f"{path.name} is not a readable video ({e})") from e


def probe_video(path) -> dict:
    """``{"fps", "frames", "width", "height"}`` of a video file (frames may be an estimate for some containers)."""
    container = _open(path)
    with container:
        s = container.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 25)
        frames = s.frames or int(round(float(container.duration or 0) / 1e6 * fps))
        return {"fps": fps, "frames": frames, "width": s.codec_context.width, "height": s.codec_context.height}


def resize_center_crop(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[F, H, W, C]`` -> ``[F, height, width, C]``: antialiased resize to cover, then centre crop."""
    _check_size(width, height)
    f, h, w, c = frames.shape
    scale = max(width / w, height / h)
    nh, nw = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    x = frames.permute(0, 3, 1, 2).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1).contiguous()


def read_video(path, start: int = 0, count: int = 24, stride: int = 2, width: int = 512,
               height: int = 512) -> tuple[torch.Tensor, float]:
    """Frames ``start, start+stride, ...`` (``count`` of them; ``count <= 0``: all that exist), resized and cropped.

    Returns ``(frames [F, height, width, 3] in 0..1, fps of the returned frames = source fps / stride)``.
    """
    _check_size(width, height)
    if start < 0 or stride < 1:
        raise ValueError(f"start={start} must be >= 0 and stride={stride} >= 1")
    container = _open(path)
    wanted_last = start + (count - 1) * stride if count > 0 else None
    picked, total = [], 0
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            total = i + 1
            if i >= start and (i - start) % stride == 0:
                picked.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if wanted_last is not None and i >= wanted_last:
                break
    if not picked or (count > 0 and len(picked) < count):
        raise ValueError(f"{Path(path).name} has {total} frames; start={start}, stride={stride}, count={count} "
                         f"needs frame {wanted_last if wanted_last is not None else start}")
    frames = torch.stack(picked).float() / 255.0
    return resize_center_crop(frames, width, height), fps / stride


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [F, H, W, C], got shape {tuple(frames.shape)}")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _write_mp4(arr: np.ndarray, tmp: str, fps: float) -> None:
    from fractions import Fraction

    import av

    h, w = arr.shape[1] // 2 * 2, arr.shape[2] // 2 * 2  # yuv420p needs even sizes
    with av.open(tmp, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in arr:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w, :3]),
                                                             format="rgb24")))
        out.mux(stream.encode())


def _write_pil(arr: np.ndarray, tmp: str, fps: float, fmt: str) -> None:
    images = [Image.fromarray(a[..., :3]) for a in arr]
    extra = {"lossless": False, "quality": 90} if fmt == "WEBP" else {}
    images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=0, **extra)


def write_video(frames: torch.Tensor, path, fps: float, overwrite: bool = False) -> Path:
    """Write ``[F, H, W, C]`` frames as ``.mp4`` (H.264), ``.webp`` (animated) or ``.gif``, by extension."""
    path = Path(path)
    if not fps > 0:
        raise ValueError(f"fps={fps} must be > 0")
    arr = _to_uint8(frames)
    ext = path.suffix.lower()
    if ext == ".mp4":
        return atomic_write(path, lambda tmp: _write_mp4(arr, tmp, fps), overwrite)
    if ext in (".webp", ".gif"):
        return atomic_write(path, lambda tmp: _write_pil(arr, tmp, fps, ext[1:].upper()), overwrite)
    raise ValueError(f"{path.name}: unsupported video extension {ext!r}; use .mp4, .webp or .gif")


def contact_sheet(frames: torch.Tensor, columns: int | None = None, path=None, overwrite: bool = False):
    """Grid of frames (row-major) as a PIL image; saved as PNG when ``path`` is given."""
    arr = _to_uint8(frames)
    f, h, w, _ = arr.shape
    cols = columns or math.ceil(math.sqrt(f))
    rows = math.ceil(f / cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "black")
    for i, a in enumerate(arr):
        sheet.paste(Image.fromarray(a[..., :3]), ((i % cols) * w, (i // cols) * h))
    if path is not None:
        atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"), overwrite)
    return sheet
