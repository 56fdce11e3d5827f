"""Video reading (Tune-A-Video frame sampling, resize + centre crop) and atomic writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tunevideo.modules.video_io import contact_sheet, probe_video, read_video, resize_center_crop, write_video

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample" / "man-skiing-16f-128.mp4"


def _indexed_clip(n=12, h=48, w=64):
    """Frame i is uniformly grey at level 10 + 20 i, so decoded frames reveal their source index."""
    levels = (10 + 20 * torch.arange(n)).float() / 255
    return levels.view(n, 1, 1, 1).expand(n, h, w, 3).contiguous()


def _indices(frames):
    return ((frames.mean(dim=(1, 2, 3)) * 255 - 10) / 20).round().long().tolist()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "indexed.mp4"
    write_video(_indexed_clip(), path, fps=12)
    return path


def test_round_trip_keeps_order_shape_and_fps(clip_path):
    info = probe_video(clip_path)
    assert info["frames"] == 12 and info["width"] == 64 and abs(info["fps"] - 12) < 1e-3
    frames, fps = read_video(clip_path, start=0, count=12, stride=1, width=64, height=48)
    assert frames.shape == (12, 48, 64, 3) and abs(fps - 12) < 1e-3
    assert _indices(frames) == list(range(12))


def test_start_and_stride_select_frames(clip_path):
    frames, fps = read_video(clip_path, start=1, count=4, stride=3, width=64, height=48)
    assert _indices(frames) == [1, 4, 7, 10] and abs(fps - 4) < 1e-3
    everything, _ = read_video(clip_path, start=2, count=0, stride=5, width=64, height=48)
    assert _indices(everything) == [2, 7]


def test_resize_covers_then_crops_the_centre():
    img = torch.zeros(1, 40, 80, 3)
    img[:, :, 20:60] = 1.0  # a centred white band half the width
    out = resize_center_crop(img, 40, 40)  # scale 1, crop the central 40 columns = the band
    assert out.shape == (1, 40, 40, 3) and out.min() > 0.99
    up = resize_center_crop(torch.rand(2, 30, 20, 3), 64, 128)
    assert up.shape == (2, 128, 64, 3) and 0 <= up.min() and up.max() <= 1


def test_errors_name_the_input(clip_path, tmp_path):
    with pytest.raises(ValueError, match="width=510 must be a positive multiple of 8"):
        read_video(clip_path, width=510, height=512)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not a video")
    with pytest.raises(ValueError, match="bad.mp4 is not a readable video"):
        read_video(bad, width=64, height=48)
    with pytest.raises(ValueError, match="has 12 frames; start=0, stride=2, count=24"):
        read_video(clip_path, start=0, count=24, stride=2, width=64, height=48)
    with pytest.raises(ValueError, match="unsupported video extension"):
        write_video(_indexed_clip(2), tmp_path / "x.avi", fps=5)


def test_writes_are_atomic_and_never_overwrite(tmp_path):
    path = tmp_path / "out.webp"
    write_video(_indexed_clip(3), path, fps=5)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out.webp already exists"):
        write_video(_indexed_clip(4), path, fps=5)
    assert path.read_bytes() == before
    sheet = contact_sheet(_indexed_clip(5, 8, 8), columns=5, path=tmp_path / "sheet.png")
    assert sheet.size == (40, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webp", "sheet.png"]  # no temp files left


def test_shipped_sample_clip():
    frames, fps = read_video(SAMPLE, start=0, count=8, stride=1, width=64, height=64)
    assert frames.shape == (8, 64, 64, 3) and abs(fps - 14.985) < 0.01
    assert frames.std() > 0.05  # real content, not a blank clip
