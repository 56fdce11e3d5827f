"""Equivalence with the official Tune-A-Video UNet3DConditionModel (fixture made by running the reference code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from tunevideo.modules.convert import diffusers_config_from_unet_config
from tunevideo.modules.inflate import inflate_unet

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
