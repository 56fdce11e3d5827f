"""Video reading (Tune-A-Video frame sampling, resize + centre crop) and atomic writing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from tunevideo.modules.files import video_io

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
    video_io.write_video(_indexed_clip(), path, fps=12)
    return path


def test_round_trip_keeps_order_shape_and_fps(clip_path):
    info = video_io.probe_video(clip_path)
    assert info["frames"] == 12 and (info["width"], info["height"]) == (64, 48) and abs(info["fps"] - 12) < 1e-3
    frames, fps = video_io.read_video(clip_path, start=0, count=12, stride=1, width=64, height=48)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == torch.float32 and abs(fps - 12) < 1e-3
    assert _indices(frames) == list(range(12))
    assert (frames - _indexed_clip()).abs().max() < 3 / 255  # H.264 at crf 18 on flat frames


@pytest.mark.parametrize("ext", ["webp", "gif"])
def test_animated_image_round_trip(tmp_path, ext):
    path = video_io.write_video(_indexed_clip(6, 24, 32), tmp_path / f"clip.{ext}", fps=12)
    info = video_io.probe_video(path)
    assert info["frames"] == 6 and (info["width"], info["height"]) == (32, 24) and abs(info["fps"] - 12) < 0.6
    frames, fps = video_io.read_video(path, start=1, count=0, stride=2, width=32, height=24)
    assert frames.shape == (3, 24, 32, 3) and _indices(frames) == [1, 3, 5] and abs(fps - 6) < 0.3


def test_start_and_stride_select_frames(clip_path):
    frames, fps = video_io.read_video(clip_path, start=1, count=4, stride=3, width=64, height=48)
    assert _indices(frames) == [1, 4, 7, 10] and abs(fps - 4) < 1e-3
    everything, _ = video_io.read_video(clip_path, start=2, count=0, stride=5, width=64, height=48)
    assert _indices(everything) == [2, 7]
    last, _ = video_io.read_video(clip_path, start=11, count=1, stride=2, width=64, height=48)
    assert _indices(last) == [11]


def test_resize_covers_then_crops_the_centre():
    img = torch.zeros(1, 40, 80, 3)
    img[:, :, 20:60] = 1.0  # a centred white band half the width
    out = video_io.resize_center_crop(img, 40, 40)  # scale 1, crop the central 40 columns = the band
    assert out.shape == (1, 40, 40, 3) and out.min() > 0.99
    # Downscale: a centred square in a wide image stays centred and symmetric; the edges are cropped away.
    img = torch.zeros(1, 40, 100, 3)
    img[:, 10:30, 40:60] = 1.0
    img[:, :, :20, 0] = 1.0  # red strip on the left edge, outside the centre crop
    out = video_io.resize_center_crop(img, 16, 16)  # scale 0.4 -> 16x40, keep columns 12..28
    assert out.shape == (1, 16, 16, 3)
    assert torch.allclose(out, out.flip(1), atol=1e-5) and torch.allclose(out, out.flip(2), atol=1e-5)
    assert out[0, 7:9, 7:9].min() > 0.95 and out[0, [0, 0, -1, -1], [0, -1, 0, -1]].max() < 0.05
    # Upscale a tall image into a wide target.
    up = video_io.resize_center_crop(torch.rand(2, 30, 20, 3), 64, 128)
    assert up.shape == (2, 128, 64, 3) and 0 <= up.min() and up.max() <= 1


def _tag_rotated(src: Path, dst: Path) -> None:
    """Copy an mp4, setting its track header matrix to "display turned 90 degrees clockwise" (as phones tag
    portrait clips that are stored landscape)."""
    data = bytearray(src.read_bytes())
    i = data.find(b"tkhd")
    assert i > 0 and data[i + 4] == 0  # a version-0 track header, as our writer makes
    matrix = i + 4 + 24 + 8 + 8  # version/flags, times, track id, reserved, duration | reserved | layer..volume
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    dst.write_bytes(bytes(data))


def test_display_rotation_is_applied(tmp_path):
    clip = torch.zeros(2, 32, 48, 3)
    clip[:, :8, :8, 0] = 1.0  # red block at the stored top-left
    video_io.write_video(clip, tmp_path / "stored.mp4", fps=5)
    _tag_rotated(tmp_path / "stored.mp4", tmp_path / "portrait.mp4")
    info = video_io.probe_video(tmp_path / "portrait.mp4")
    assert (info["width"], info["height"]) == (32, 48)
    frames, _ = video_io.read_video(tmp_path / "portrait.mp4", count=2, stride=1, width=32, height=48)
    assert frames.shape == (2, 48, 32, 3)
    assert frames[:, 1:7, -7:-1, 0].min() > 0.8  # turned clockwise: top-left -> top-right
    assert frames[:, 1:7, 1:7, 0].max() < 0.2


def test_errors_name_the_input(clip_path, tmp_path):
    for w, h, name in ((510, 512, "width=510"), (64, 0, "height=0"), (64.0, 64, "width=64.0")):
        with pytest.raises(ValueError, match=f"{name} must be a positive multiple of 8"):
            video_io.read_video(clip_path, width=w, height=h)
    with pytest.raises(ValueError, match="width=12 must be a positive multiple of 8"):
        video_io.resize_center_crop(torch.rand(1, 8, 8, 3), 12, 8)
    for fn in (video_io.read_video, video_io.probe_video):
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            fn(tmp_path / "nope.mp4")
    for name in ("bad.mp4", "bad.webp"):
        (tmp_path / name).write_bytes(b"definitely not a video")
        for fn in (video_io.read_video, video_io.probe_video):
            with pytest.raises(ValueError, match=f"{name} is not a readable video"):
                fn(tmp_path / name)
    with pytest.raises(ValueError, match="indexed.mp4 has 12 frames; start=0, stride=2, count=24"):
        video_io.read_video(clip_path, start=0, count=24, stride=2, width=64, height=48)
    with pytest.raises(ValueError, match="indexed.mp4 has 12 frames; start=20, stride=2, count=0"):
        video_io.read_video(clip_path, start=20, count=0, stride=2, width=64, height=48)
    with pytest.raises(ValueError, match="stride=0"):
        video_io.read_video(clip_path, stride=0, width=64, height=48)
    with pytest.raises(ValueError, match="x.avi: unsupported video extension"):
        video_io.write_video(_indexed_clip(2), tmp_path / "x.avi", fps=5)
    with pytest.raises(ValueError, match="fps=0 must be"):
        video_io.write_video(_indexed_clip(2), tmp_path / "x.mp4", fps=0)
    with pytest.raises(ValueError, match=r"got shape \(0, 8, 8, 3\)"):
        video_io.write_video(torch.zeros(0, 8, 8, 3), tmp_path / "x.gif", fps=5)
    with pytest.raises(ValueError, match="columns=0"):
        video_io.contact_sheet(_indexed_clip(2), columns=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "bad.webp"]  # failed writes left nothing


def test_writes_are_atomic_and_never_overwrite(tmp_path):
    path = tmp_path / "out.webp"
    video_io.write_video(_indexed_clip(3), path, fps=5)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out.webp already exists"):
        video_io.write_video(_indexed_clip(4), path, fps=5)
    assert path.read_bytes() == before
    video_io.write_video(_indexed_clip(4), path, fps=5, overwrite=True)
    assert video_io.probe_video(path)["frames"] == 4
    sheet = video_io.contact_sheet(_indexed_clip(5, 8, 8), columns=5, path=tmp_path / "sheet.png")
    assert sheet.size == (40, 8)
    with pytest.raises(FileExistsError, match="sheet.png already exists"):
        video_io.contact_sheet(_indexed_clip(2, 8, 8), path=tmp_path / "sheet.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webp", "sheet.png"]  # no temp files left
    assert video_io.unique_path(tmp_path, "out", "webp").name == "out_00001.webp"


def test_frame_layouts_and_odd_sizes(tmp_path):
    grey = torch.full((2, 15, 21, 1), 0.5)  # one channel, odd sizes: mp4 drops the last row and column
    video_io.write_video(grey, tmp_path / "g.mp4", fps=8)
    info = video_io.probe_video(tmp_path / "g.mp4")
    assert (info["width"], info["height"], info["frames"]) == (20, 14, 2)
    rgba = torch.rand(3, 8, 16, 4)
    sheet = video_io.contact_sheet(rgba)  # default: about square, 2 columns for 3 frames
    assert sheet.mode == "RGB" and sheet.size == (32, 16)
    assert video_io.contact_sheet(rgba, columns=10).size == (48, 8)  # never wider than the frame count


def test_shipped_sample_clip():
    info = video_io.probe_video(SAMPLE)
    assert (info["frames"], info["width"], info["height"]) == (16, 128, 128)
    assert SAMPLE.stat().st_size < 200_000
    frames, fps = video_io.read_video(SAMPLE, start=0, count=8, stride=1, width=64, height=64)
    assert frames.shape == (8, 64, 64, 3) and abs(fps - 14.985) < 0.01
    assert frames.std() > 0.05  # real content, not a blank clip


def test_too_short_or_too_large_requests_are_refused_before_decoding(clip_path, monkeypatch):
    """Issue 19: the clip's length and the memory a request needs are checked before any frame is decoded."""
    def no_decoding(*_):
        raise AssertionError("decoded before checking the request")
        yield  # a generator, as the real one: nothing runs until the first frame is asked for

    monkeypatch.setattr(video_io, "_av_frames", no_decoding)
    with pytest.raises(ValueError, match="indexed.mp4 has 12 frames; start=0, stride=1, count=1024 needs frame 1023"):
        video_io.read_video(clip_path, start=0, count=1024, stride=1, width=64, height=48)
    monkeypatch.setattr(video_io, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match=r"12 frames at 4096x4096 need about 4.5 GiB .* 1.0 GiB are free"):
        video_io.read_video(clip_path, start=0, count=12, stride=1, width=4096, height=4096)
