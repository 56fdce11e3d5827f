"""Files written before the engine redesign still load, and the redesigned engine writes the same bytes.

``tests/fixtures/legacy_files/`` was written by the pack as of commit a8059e7 (the last commit before the engine moved
into packages) on the tiny random models, with the same seeds as below: a Tune-A-Video delta (2 tuning steps), a
MotionDirector motion LoRA and spatial LoRA (2 steps, rank 2, AnimateDiff base), and ``expected.safetensors``: twelve
weights of that version's AnimateDiff model with both LoRAs merged (motion at 1.0, spatial at 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CTX_DIM
from safetensors import safe_open
from safetensors.torch import load_file
from tunevideo import tiny
from tunevideo.modules.convert.identity import base_identity
from tunevideo.modules.convert.unet import unet_to_ldm
from tunevideo.modules.deltas import load_delta, save_delta
from tunevideo.modules.networks.animatediff import build_motion_unet
from tunevideo.modules.networks.inflate import inflate_unet
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.modules.training import lora as L
from tunevideo.modules.training.tune import TuneConfig, tune
from tunevideo.modules.video_unet import VideoUNet

LEGACY = Path(__file__).parent / "fixtures" / "legacy_files"


def _clip():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 5, CTX_DIM, generator=g)


def _inflated() -> VideoUNet:
    u2d = tiny.tiny_unet2d(seed=0)
    return VideoUNet(inflate_unet(u2d), NoiseSchedule.scaled_linear(), **base_identity(unet_to_ldm(u2d)))


def _animatediff() -> VideoUNet:
    net = build_motion_unet(tiny.tiny_unet2d(seed=0), tiny.tiny_motion_module("v2", seed=0), "mm_tiny.ckpt")
    return VideoUNet(net, NoiseSchedule.scaled_linear(), **base_identity(unet_to_ldm(tiny.tiny_unet2d(seed=0))))


def test_a_delta_saved_before_the_redesign_loads_exactly():
    path = LEGACY / "delta_tune_a_video.safetensors"
    saved = load_file(str(path))
    loaded = load_delta(_inflated(), path)
    state = loaded.network.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    assert loaded.history and loaded.history[-1].method == "tune-a-video" and loaded.history[-1].steps == 2


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_the_redesigned_engine_writes_that_delta_again(tmp_path):
    # The same tensors under the same metadata. On the machine that wrote the fixture they are bit-identical; the
    # tolerance only allows another CPU's summation order. (The files' bytes are not compared whole: safetensors
    # writes the metadata map in an order that changes from one process to the next.)
    x, c = _clip()
    tuned, _ = tune(_inflated(), x, c, TuneConfig(steps=2, learning_rate=1e-3, seed=0, gradient_checkpointing=False))
    save_delta(tuned, tmp_path / "d.safetensors")
    new, old = load_file(str(tmp_path / "d.safetensors")), load_file(str(LEGACY / "delta_tune_a_video.safetensors"))
    assert new.keys() == old.keys() and all(new[k].dtype == old[k].dtype for k in new)
    for key in new:
        torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=1e-6)
    meta_new, meta_old = _metadata(tmp_path / "d.safetensors"), _metadata(LEGACY / "delta_tune_a_video.safetensors")
    history_new, history_old = json.loads(meta_new.pop("history")), json.loads(meta_old.pop("history"))
    assert meta_new == meta_old
    for run_new, run_old in zip(history_new, history_old, strict=True):
        assert run_new.pop("final_loss") == pytest.approx(run_old.pop("final_loss"), rel=1e-4)
        assert run_new == run_old


def test_loras_saved_before_the_redesign_load_and_merge_to_the_same_weights():
    model = _animatediff()
    motion = L.load_lora(LEGACY / "motion_lora.safetensors", model.network, "temporal")
    spatial = L.load_lora(LEGACY / "spatial_lora.safetensors", model.network, "spatial")
    merged = L.merge(L.merge(model, motion, 1.0), spatial, 0.5)
    expected = load_file(str(LEGACY / "expected.safetensors"))
    state = merged.network.state_dict()
    assert len(expected) == 12
    for key, value in expected.items():
        torch.testing.assert_close(state[key.removeprefix("merged.")], value, rtol=0, atol=1e-6)
    assert _metadata(LEGACY / "motion_lora.safetensors")["format"] == L.FORMAT  # still the layout we write
