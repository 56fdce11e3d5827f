"""Equivalence with the official Tune-A-Video UNet3DConditionModel (fixture made by running the reference code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from tunevideo.modules.convert.unet import diffusers_config_from_unet_config
from tunevideo.modules.networks.inflate import inflate_unet

REF = Path(__file__).resolve().parent / "fixtures" / "tav_reference"


def _load(name):
    config = json.loads((REF / f"{name}.config.json").read_text())
    data = load_file(REF / f"{name}.safetensors")
    state = {k.removeprefix("unet."): v.float() for k, v in data.items() if k.startswith("unet.")}
    return config, state, data


@pytest.mark.parametrize("name", ["sd1_tiny", "sd2_tiny"])
@pytest.mark.parametrize("frames", [1, 4])
def test_inflated_unet_equals_reference(name, frames):
    config, state, data = _load(name)
    video = inflate_unet(UNet2DConditionModel(**config).eval())
    video.load_state_dict(state, strict=True)  # the reference checkpoint's keys are exactly ours
    with torch.no_grad():
        out = video(data[f"x_f{frames}"], data["t"], data["ctx"])
    assert (out - data[f"out_f{frames}"]).abs().max().item() <= 1e-4  # measured: 3e-6


def test_our_state_dict_loads_into_reference_layout():
    config, state, _ = _load("sd1_tiny")
    video = inflate_unet(UNet2DConditionModel(**config).eval())
    ours = video.state_dict()
    assert ours.keys() == state.keys()
    assert all(ours[k].shape == state[k].shape for k in ours)


def test_full_sd15_keys_and_shapes_match_reference():
    sd15 = {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2] * 4,
            "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1, "context_dim": 768,
            "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False, "adm_in_channels": None}
    with torch.device("meta"):
        video = inflate_unet(UNet2DConditionModel(**diffusers_config_from_unet_config(sd15)))
    reference = json.loads((REF / "sd15_full_keys.json").read_text())
    ours = {k: list(v.shape) for k, v in video.state_dict().items()}
    assert ours == reference


GRADS = json.loads((REF / "trainable_grads.json").read_text())


def _reference_model():
    """The reference fixture's sd1_tiny network with every attn_temp.to_out random, so all trainables can learn."""
    config, state, _ = _load("sd1_tiny")
    video = inflate_unet(UNet2DConditionModel(**config).eval())
    video.load_state_dict(state, strict=True)
    return video


@pytest.mark.parametrize("preset,case", [("tune-a-video", "no_checkpointing"),
                                         ("tune-a-video-reference", "reentrant")])
def test_trainable_presets_equal_what_the_reference_trains(preset, case):
    """tune-a-video = the paper's set (every block); tune-a-video-reference = the tensors that receive a gradient in
    the official code, whose re-entrant checkpointing starves the down blocks (fixture made by running it)."""
    from tunevideo.modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS as PRESETS
    from tunevideo.modules.training.trainable import select_trainable

    video = _reference_model()
    names = select_trainable(video, PRESETS[preset])
    assert set(select_trainable(video, PRESETS["tune-a-video"])) == set(GRADS["trainable"])
    assert names == sorted(GRADS[case]["random_to_out"])
    # And our training step gives exactly those tensors a gradient, with checkpointing on or off.
    g = torch.Generator().manual_seed(0)
    x, ctx, noise = (torch.randn(1, 4, 4, 16, 16, generator=g), torch.randn(1, 7, 48, generator=g),
                     torch.randn(1, 4, 4, 16, 16, generator=g))
    for name, p in video.named_parameters():
        p.requires_grad_(name in set(names))
    for checkpointing in (False, True):
        video.train()
        if checkpointing:
            video.enable_gradient_checkpointing()
        video.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(video(x, torch.tensor([500]), ctx), noise).backward()
        got = sorted(n for n, p in video.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0)
        assert got == names
