"""Equivalence with the official Video-P2P code (fixtures made by running it; see fixtures/videop2p_reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, null_text_invert
from tunevideo.modules.networks.inflate import inflate_unet
from tunevideo.modules.sampling.schedule import NoiseSchedule

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REF = FIXTURES / "videop2p_reference"


def _p2p_unet():
    """The reference fixture's sd1_tiny network and weights, inflated with Video-P2P's attention."""
    config = json.loads((FIXTURES / "tav_reference" / "sd1_tiny.config.json").read_text())
    data = load_file(FIXTURES / "tav_reference" / "sd1_tiny.safetensors")
    state = {k.removeprefix("unet."): v.float() for k, v in data.items() if k.startswith("unet.")}
    video = inflate_unet(UNet2DConditionModel(**config).eval(), attention="video-p2p")
    video.load_state_dict(state, strict=True)
    return video


@pytest.fixture(scope="module")
def p2p_unet():
    return _p2p_unet()


@pytest.mark.parametrize("frames", [1, 4])
def test_video_p2p_unet_equals_reference(p2p_unet, frames):
    io = load_file(REF / "unet.safetensors")
    with torch.no_grad():
        out = p2p_unet(io[f"x_f{frames}"], io["t"], io["ctx"])
    assert (out - io[f"out_f{frames}"]).abs().max() <= 1e-5


def test_null_text_inversion_equals_reference(p2p_unet):
    """5 DDIM steps, 4 frames of 16x16 latents, guidance 7.5, 10 inner Adam steps: the inversion path and the
    per-step embeddings of the reference NullInversion (which itself varies by ~6e-4 between CPU thread counts)."""
    ref = load_file(REF / "null_text.safetensors")
    sched = NoiseSchedule.scaled_linear()

    def model(x, t, context):
        return p2p_unet(x, t.expand(x.shape[0]), context.expand(x.shape[0], -1, -1))

    assert torch.equal(sched.ddim_timesteps(5), ref["timesteps"].long())
    for prefix, epsilon in (("", 1e-5), ("es_", 4.0)):  # es_: a threshold at which the early stop fires
        config = NullTextConfig(steps=5, early_stop_epsilon=epsilon)
        result = null_text_invert(model, sched, ref["x0"], ref["cond"], ref["uncond0"], config)
        assert (result.path - ref["ddim_latents"]).abs().max() <= 5e-5
        diff = (result.uncond - ref[f"{prefix}uncond_embeddings"][:, 0]).abs()
        assert diff.mean() <= 1e-4 and diff.max() <= 1e-2, (prefix, float(diff.mean()), float(diff.max()))


def test_video_p2p_edit_equals_reference():
    """Word swap + reweight + local blend (partial masks), 10 steps, 2 frames of 64x64 latents, per-step null-text
    embeddings on the source branch: final latents of both branches and every local-blend mask of the official
    pipeline (fixture case e; its token mapper, reweighting and blend tokens are the reference's own)."""
    from tunevideo.modules.methods.video_p2p.control import EditControl
    from tunevideo.modules.methods.video_p2p.edit import p2p_sample

    config = json.loads((FIXTURES / "tav_reference" / "sd1_tiny.config.json").read_text())
    config["attention_head_dim"] = 8  # the reference's LocalBlend assumes 8 heads
    data = load_file(FIXTURES / "tav_reference" / "sd1_tiny.safetensors")
    unet = inflate_unet(UNet2DConditionModel(**config).eval(), attention="video-p2p")
    unet.load_state_dict({k.removeprefix("unet."): v.float() for k, v in data.items() if k.startswith("unet.")})
    ref = load_file(REF / "p2p_edit.safetensors")
    blend = ref["e_blend_alpha_layers"].float()
    control = EditControl(word_swap=True, mapper=ref["e_mapper"].float(), reweight=ref["e_equalizer"].float(),
                          blend_src=blend[0], blend_edit=blend[1], cross_replace_steps=0.4, self_replace_steps=0.5,
                          blend_threshold=0.8)
    out, masks, _ = p2p_sample(unet, NoiseSchedule.scaled_linear(), ref["x_T"], ref["cond_src"], ref["cond_edit"],
                               ref["uncond"], control, steps=10, null_text=ref["null_uncond"][:, 0])
    assert (out - ref["e_latents"]).abs().max() <= 1e-3
    assert torch.equal(torch.stack(masks), ref["e_blend_masks"])
