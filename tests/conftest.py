"""Shared fixtures: tiny random models built from configs or from the shared ComfyUI reference fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tunevideo import tiny

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


#: Width of the tiny model's text embeddings (the pack's one tiny config, modules/tiny.py).
CTX_DIM = tiny.TINY_UNET_CONFIG["context_dim"]


@pytest.fixture(scope="session")
def tiny_unet_config():
    """The pack's tiny SD1-layout ComfyUI unet_config (3 cross-attention levels + 1 plain, 2 res blocks)."""
    return dict(tiny.TINY_UNET_CONFIG)


def make_unet2d(unet_config, seed=0):
    """Random diffusers UNet for a ComfyUI unet_config, with non-trivial norms."""
    return tiny.tiny_unet2d(unet_config, seed)


@pytest.fixture()
def tiny_unet2d(tiny_unet_config):
    return make_unet2d(tiny_unet_config)


@pytest.fixture()
def tiny_video_model(tiny_unet2d):
    from tunevideo.modules.convert.identity import base_identity
    from tunevideo.modules.convert.unet import unet_to_ldm
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.video_unet import VideoUNet

    return VideoUNet(inflate_unet(tiny_unet2d), NoiseSchedule.scaled_linear(),
                      **base_identity(unet_to_ldm(tiny_unet2d)))


def eval_loss(model, latents, ctx):
    """The denoising loss of ``model`` on a fixed draw of 8 timesteps and noises (to compare before/after tuning)."""
    from tunevideo.modules.training.tune import denoising_loss

    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn((8, *latents.shape[1:]), generator=g)
    with torch.no_grad():
        return denoising_loss(model.network, model.schedule, latents.expand(8, -1, -1, -1, -1),
                              ctx.expand(8, -1, -1), t, noise).item()
