"""Shared fixtures: tiny random models built from configs or from the shared ComfyUI reference fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = Path(os.environ.get("TUNEVIDEO_SHARED", ROOT.parent / "shared"))
COMFY_FIXTURE = SHARED / "fixtures" / "comfy_unet"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_report_header(config):
    return [f"shared fixtures: {COMFY_FIXTURE} ({'found' if COMFY_FIXTURE.is_dir() else 'MISSING'})",
            f"COMFYUI_PATH: {os.environ.get('COMFYUI_PATH') or 'unset (real-host tests skip)'}"]


@pytest.fixture(scope="session")
def comfy_fixture():
    """ComfyUI's own SD1.5-layout tiny UNet: (ldm state dict, unet_config, io tensors)."""
    if not COMFY_FIXTURE.is_dir():
        pytest.skip(f"shared ComfyUI fixture not found at {COMFY_FIXTURE} (set TUNEVIDEO_SHARED)")
    from safetensors.torch import load_file

    cfg = json.loads((COMFY_FIXTURE / "sd15_tiny.unet_config.json").read_text())
    sd = load_file(COMFY_FIXTURE / "sd15_tiny.unet.safetensors")
    io = load_file(COMFY_FIXTURE / "sd15_tiny.io.safetensors")
    return sd, cfg, io


@pytest.fixture(scope="session")
def tiny_unet_config():
    """A small SD1-layout ComfyUI unet_config (3 cross-attention levels + 1 plain, 2 res blocks)."""
    return {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 1, 2, 2],
            "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
            "transformer_depth_middle": 1, "context_dim": 48, "num_heads": 4, "num_head_channels": -1,
            "use_linear_in_transformer": False, "adm_in_channels": None, "image_size": 32}


def make_unet2d(unet_config, seed=0):
    """Random diffusers UNet for a ComfyUI unet_config, with non-trivial norms."""
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert import diffusers_config_from_unet_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**diffusers_config_from_unet_config(unet_config)).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return unet


@pytest.fixture()
def tiny_unet2d(tiny_unet_config):
    return make_unet2d(tiny_unet_config)


@pytest.fixture()
def tiny_video_model(tiny_unet2d):
    from tunevideo.modules.checkpoint_io import base_identity
    from tunevideo.modules.convert import unet_to_ldm
    from tunevideo.modules.inflate import inflate_unet
    from tunevideo.modules.schedule import NoiseSchedule
    from tunevideo.modules.video_model import VideoModel

    return VideoModel(inflate_unet(tiny_unet2d), NoiseSchedule.scaled_linear(),
                      **base_identity(unet_to_ldm(tiny_unet2d)))
