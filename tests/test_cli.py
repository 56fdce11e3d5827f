"""The headless CLI: the README's demo end to end, self-check, and no silent overwrite."""

from __future__ import annotations

import json

import pytest
import torch
from tunevideo import cli
from tunevideo.modules.build import video_model_from_checkpoint
from tunevideo.modules.convert.checkpoint import load_checkpoint
from tunevideo.modules.deltas import load_delta, read_delta
from tunevideo.modules.files.video_io import probe_video
from tunevideo.tiny import write_tiny_checkpoint


def test_self_check_reports_inflation():
    report = cli.self_check()
    assert report["one_frame_max_diff_vs_2d"] <= 1e-4
    assert report["video_unet_keys"] - report["ldm_keys"] == report["temporal_tensors"] > 0


def test_edit_writes_all_outputs_and_a_reloadable_delta(tmp_path):
    ckpt = tmp_path / "tiny.safetensors"
    write_tiny_checkpoint(ckpt, seed=0)
    settings = cli.EditSettings(source_prompt="a man is skiing", prompt="a bear is skiing", frames=4, stride=2,
                                width=64, height=64, tune_steps=3, learning_rate=1e-3, inversion_steps=3,
                                sampling_steps=3, cfg=5.0)
    out = tmp_path / "edit"
    summary = cli.run_edit(ckpt, cli.SAMPLE_CLIP, out, settings, torch.device("cpu"))
    assert sorted(p.name for p in out.iterdir()) == sorted(cli.OUTPUTS)
    assert json.loads((out / "summary.json").read_text())["base_model_hash"] == summary["base_model_hash"]
    info = probe_video(out / "edited.mp4")
    assert info["frames"] == 4 and info["width"] == 64
    from PIL import Image
    assert Image.open(out / "contact_sheet.png").size == (4 * 64, 2 * 64)  # source row over edited row
    comp = load_checkpoint(ckpt)
    base = video_model_from_checkpoint(comp)
    tensors, meta = read_delta(out / "tuned.safetensors")
    assert meta["prompt"] == "a man is skiing" and meta["steps"] == "3"
    loaded = load_delta(base, out / "tuned.safetensors")
    assert set(tensors) == set(loaded.delta_names())
    with pytest.raises(FileExistsError, match="already holds"):
        cli.run_edit(ckpt, cli.SAMPLE_CLIP, out, settings, torch.device("cpu"))


def test_cli_rejects_missing_inputs(tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint .* not found"):
        cli.main(["tune-a-video", "--checkpoint", str(tmp_path / "x.safetensors"), "--video", "v.mp4",
                  "--source-prompt", "a", "--prompt", "b", "--out", str(tmp_path / "o")])
