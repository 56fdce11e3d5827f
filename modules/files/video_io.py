"""Reading clips the way Tune-A-Video samples its training video, and writing results.

Tune-A-Video (Wu et al., ICCV 2023) trains on ``n_sample_frames`` frames taken every ``sample_frame_rate`` source
frames from ``sample_start_idx``, resized to ``width x height``. Here frames are resized to *cover* the target and
centre-cropped, so the aspect ratio is kept. Frames are ComfyUI-style ``[F, H, W, C]`` float32 in 0..1.

Decoding uses PyAV (FFmpeg) and stops after the last needed frame; each kept frame is resized as soon as it is
decoded and written into one preallocated output buffer, so full-resolution frames are never held together and a
clip of hundreds of frames costs one copy of the result. Rotation metadata (phone clips) is applied. Animated
WebP, which FFmpeg cannot decode, is read with Pillow. Writing (atomic, never replacing a file unless
``overwrite=True``) lives in :mod:`.video_write` and is re-exported here.
"""

from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import unique_path
from .video_write import contact_sheet, write_video

__all__ = ["probe_video", "read_video", "iter_frames", "resize_center_crop", "write_video", "contact_sheet",
           "unique_path"]

logger = logging.getLogger(__name__)

_PIL_READ = (".webp",)  # FFmpeg's webp decoder cannot read animated WebP


def _check_size(width, height) -> None:
    for name, v in (("width", width), ("height", height)):
        try:
            n = None if isinstance(v, bool) else operator.index(v)
        except TypeError:
            n = None
        if n is None or n <= 0 or n % 8:
            raise ValueError(f"{name}={v} must be a positive multiple of 8 (the VAE downsamples by 8)")


def _unreadable(path: Path, e: object) -> ValueError:
    return ValueError(f"{path.name} is not a readable video ({e})")


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    return path


def _open_av(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise _unreadable(path, e) from e
    if not container.streams.video:
        container.close()
        raise _unreadable(path, "no video stream")
    return container


def _rotate(arr: np.ndarray, rotation) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise, as FFmpeg reports it) to an ``[H, W, C]`` frame."""
    k = int(round((rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(arr, k)) if k else arr


def _av_frames(path: Path, container) -> Iterator[Callable[[], np.ndarray]]:
    """Yield a callable per decoded frame; calling it converts the frame to upright ``[H, W, 3]`` uint8."""
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        for frame in container.decode(stream):
            yield lambda frame=frame: _rotate(frame.to_ndarray(format="rgb24"), frame.rotation)
    except av.error.FFmpegError as e:
        raise _unreadable(path, e) from e


def _pil_frames(path: Path, image: Image.Image, durations: list) -> Iterator[Callable[[], np.ndarray]]:
    """Like ``_av_frames`` for an animated image; appends each frame's duration (ms) to ``durations``."""
    for i in range(getattr(image, "n_frames", 1)):
        try:
            image.seek(i)
            image.load()  # the frame's duration is known only once it is decoded
        except (OSError, EOFError) as e:
            raise _unreadable(path, e) from e
        durations.append(image.info.get("duration") or 0)
        yield lambda: np.array(image.convert("RGB"))


def _open_pil(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from e
    return image


def _av_fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 25)


def probe_video(path) -> dict:
    """``{"fps", "frames", "width", "height"}`` of a video file, as displayed (rotation applied).

    ``frames`` comes from the container header and may be an estimate for some formats.
    """
    import av

    path = _existing(path)
    if path.suffix.lower() in _PIL_READ:
        with _open_pil(path) as image:
            n = getattr(image, "n_frames", 1)
            durations = []
            for _ in _pil_frames(path, image, durations):
                pass
            mean = sum(durations) / len(durations) if durations else 0
            return {"fps": 1000.0 / mean if mean > 0 else 25.0, "frames": n, "width": image.width,
                    "height": image.height}
    with _open_av(path) as container:
        s = container.streams.video[0]
        fps = _av_fps(s)
        frames = s.frames or int(round(float(container.duration or 0) / 1e6 * fps))
        w, h = s.codec_context.width, s.codec_context.height
        try:
            for frame in container.decode(s):  # the first frame carries the display rotation
                if int(round((frame.rotation or 0) / 90)) % 2:
                    w, h = h, w
                break
        except av.error.FFmpegError as e:
            raise _unreadable(path, e) from e
        return {"fps": fps, "frames": frames, "width": w, "height": h}


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (psutil when installed, as under ComfyUI; else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _header_frames(container) -> tuple[int, bool]:
    """(frame count from the container header, whether it is exact); (0, False) when unknown."""
    s = container.streams.video[0]
    if s.frames:
        return int(s.frames), True
    return int(float(container.duration or 0) / 1e6 * _av_fps(s)), False


def _check_request(path: Path, frames: int, exact: bool, start: int, count: int, stride: int, width: int,
                   height: int) -> int:
    """Before decoding: refuse a range the container cannot hold (by its header frame count; an estimate from the
    duration gets a 10% margin) and a result that cannot fit in memory, with the numbers. Returns the number of
    frames the request will return by the header (``count``, or for ``count <= 0`` all that follow ``start``)."""
    wanted_last = start + (count - 1) * stride if count > 0 else start
    known = frames if exact else int(frames * 1.1) + 1
    if frames > 0 and wanted_last >= known:
        raise ValueError(f"{path.name} has {frames} frames{'' if exact else ' (header estimate)'}; start={start}, "
                         f"stride={stride}, count={count} needs frame {wanted_last}")
    n = count if count > 0 else max(frames - start - 1, 0) // stride + 1
    one = n * width * height * 3 * 4  # the one float32 output buffer
    need = 2 * one  # and as much again: the next node's copy (a corrupted or resized clip, a cached variant)
    free = available_memory()
    if free is not None and need > free:
        raise ValueError(f"{path.name}: {n} frames at {width}x{height} need about {need / 2**30:.1f} GiB of memory "
                         f"({n} x {height} x {width} x 3 float32 = {one / 2**30:.1f} GiB, and as much again for "
                         f"the next node's copy) but {free / 2**30:.1f} GiB are free; load fewer frames "
                         f"(frame_count, stride) or a smaller size")
    return n


def iter_frames(path, start: int = 0, stride: int = 1, count: int = 0,
                pillow_suffixes: tuple[str, ...] = _PIL_READ) -> Iterator[np.ndarray]:
    """Frames ``start, start + stride, ...`` (``count`` of them; 0: all) of a video file at their own size, upright
    ``[H, W, 3]`` uint8, decoded lazily: only the picked frames are converted, decoding stops after the last one and
    the file is closed when the iteration ends or the iterator is closed. Files whose suffix (lower case) is in
    ``pillow_suffixes`` are read with Pillow (animated images; FFmpeg cannot decode animated WebP), others with PyAV.
    An unreadable file raises ValueError naming it."""
    if start < 0 or stride < 1:
        raise ValueError(f"start={start} must be >= 0 and stride={stride} >= 1")
    path = Path(path)
    if path.suffix.lower() in pillow_suffixes:
        opened = _open_pil(path)
        source = _pil_frames(path, opened, [])
    else:
        opened = _open_av(path)
        source = _av_frames(path, opened)
    picked = 0
    try:
        for i, to_array in enumerate(source):
            if i >= start and (i - start) % stride == 0:
                yield to_array()
                picked += 1
                if count and picked == count:
                    break
    finally:
        source.close()
        opened.close()


def resize_center_crop(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[F, H, W, C]`` -> ``[F, height, width, C]``: antialiased bicubic resize to cover, then centre crop."""
    _check_size(width, height)
    if frames.dim() != 4:
        raise ValueError(f"frames must be [F, H, W, C], got shape {tuple(frames.shape)}")
    f, h, w, c = frames.shape
    scale = max(width / w, height / h)
    nh, nw = max(height, math.ceil(h * scale - 1e-6)), max(width, math.ceil(w * scale - 1e-6))
    x = frames.permute(0, 3, 1, 2).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top:top + height, left:left + width].permute(0, 2, 3, 1).contiguous()


#: Frames decoded between two progress reports of :func:`read_video`.
PROGRESS_EVERY = 8


def read_video(path, start: int = 0, count: int = 24, stride: int = 2, width: int = 512, height: int = 512,
               callback: Callable[[int, int, dict], None] | None = None) -> tuple[torch.Tensor, float]:
    """Frames ``start, start+stride, ...`` (``count`` of them; ``count <= 0``: all that exist), resized and cropped.

    Returns ``(frames [F, height, width, 3] float32 in 0..1, fps of the returned frames = source fps / stride)``.
    Each frame is decoded, resized and written into one output buffer allocated before decoding (sized by the
    container header; grown only if the header undercounts), so hundreds of frames cost one clip of memory.
    ``callback(done, total, {})`` every :data:`PROGRESS_EVERY` frames and at the end (raise from it to stop).
    """
    _check_size(width, height)
    if start < 0 or stride < 1:
        raise ValueError(f"start={start} must be >= 0 and stride={stride} >= 1")
    path = _existing(path)
    wanted_last = start + (count - 1) * stride if count > 0 else None
    picked, total = 0, 0
    if path.suffix.lower() in _PIL_READ:
        image, durations = _open_pil(path), []
        source, fps = _pil_frames(path, image, durations), None
        header = getattr(image, "n_frames", 1), True
    else:
        image = _open_av(path)
        source, fps = _av_frames(path, image), _av_fps(image.streams.video[0])
        header = _header_frames(image)
    with image:
        expected = _check_request(path, *header, start, count, stride, width, height)
        out = torch.empty(max(expected, 1), height, width, 3)
        for i, to_array in enumerate(source):
            total = i + 1
            if i >= start and (i - start) % stride == 0:
                if picked == out.shape[0]:  # the header undercounted (a duration estimate): grow by half
                    out = torch.cat([out, torch.empty(out.shape[0] // 2 + 1, height, width, 3)])
                frame = torch.from_numpy(to_array()).unsqueeze(0).float() / 255.0
                out[picked] = resize_center_crop(frame, width, height)[0]
                picked += 1
                if callback is not None and picked % PROGRESS_EVERY == 0:
                    callback(picked, max(expected, picked), {})
            if wanted_last is not None and i >= wanted_last:
                break
        source.close()
    if not picked or (count > 0 and picked < count):
        raise ValueError(f"{path.name} has {total} frames; start={start}, stride={stride}, count={count} "
                         f"needs frame {wanted_last if wanted_last is not None else start}")
    if callback is not None:
        callback(picked, picked, {})
    if fps is None:  # Pillow: per-frame durations in ms
        mean = sum(durations) / len(durations)
        fps = 1000.0 / mean if mean > 0 else 25.0
    logger.debug("read %d frames of %s (%d decoded)", picked, path.name, total)
    if picked < 0.9 * out.shape[0]:  # the header overcounted by more than its margin: do not keep the slack
        out = out[:picked].clone()
    return out[:picked], fps / stride
