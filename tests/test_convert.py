"""ComfyUI/LDM UNet -> diffusers conversion (SD1.x and SD2.x layouts)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_unet2d
from tunevideo.modules.convert.unet import (
    UnsupportedModelError,
    detect_unet_config,
    diffusers_config_from_unet_config,
    unet_from_ldm,
    unet_to_ldm,
)


def test_reproduces_comfyui_unet_output(comfy_fixture):
    sd, cfg, io = comfy_fixture
    unet = unet_from_ldm(sd, cfg, dtype=torch.float32)
    with torch.no_grad():
        out = unet(io["x"], io["timesteps"], io["context"]).sample
    assert (out - io["out"]).abs().max().item() <= 1e-4


def test_accepts_checkpoint_prefixed_keys(comfy_fixture):
    sd, cfg, io = comfy_fixture
    prefixed = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    prefixed["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other checkpoint parts are ignored
    a = unet_from_ldm(prefixed, cfg, dtype=torch.float32).state_dict()
    b = unet_from_ldm(sd, cfg, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_from_sd15_fixture_is_derived_not_hardcoded(comfy_fixture):
    _, cfg, _ = comfy_fixture
    d = diffusers_config_from_unet_config(cfg)
    assert d["block_out_channels"] == [32, 32, 64, 64]
    assert d["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert d["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert d["attention_head_dim"] == [4, 4, 4, 4] and d["cross_attention_dim"] == 48
    assert d["use_linear_projection"] is False


SD2_TINY = {"in_channels": 4, "out_channels": 4, "model_channels": 64, "channel_mult": [1, 2, 2],
            "num_res_blocks": [1, 1, 1], "transformer_depth": [1, 1, 0], "transformer_depth_middle": 1,
            "context_dim": 40, "num_heads": -1, "num_head_channels": 32, "use_linear_in_transformer": True,
            "adm_in_channels": None}


def test_sd2_layout_head_channels_and_linear_projection():
    d = diffusers_config_from_unet_config(SD2_TINY)
    assert d["attention_head_dim"] == [2, 4, 4]  # heads = channels / 32-channel heads
    assert d["use_linear_projection"] is True and d["upcast_attention"] is True
    unet = make_unet2d(SD2_TINY, seed=3)
    ldm = unet_to_ldm(unet, prefix="model.diffusion_model.")
    proj = ldm["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    assert proj.dim() == 2  # linear projection, not a 1x1 conv
    back = unet_from_ldm(ldm, SD2_TINY)
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([5, 900]), torch.randn(2, 5, 40)
    with torch.no_grad():
        assert torch.equal(back(x, t, c).sample, unet(x, t, c).sample)
    det = detect_unet_config(ldm)
    assert det["use_linear_in_transformer"] and det["num_head_channels"] == 64 and det["context_dim"] == 40
    assert det["channel_mult"] == [1, 2, 2] and det["transformer_depth"] == [1, 1, 0]


def test_conv_proj_checkpoint_into_linear_config_is_reshaped(comfy_fixture):
    # Some SD2 checkpoints store proj_in/out as 1x1 convs even with linear projection configs.
    sd, cfg, _ = comfy_fixture
    lin_cfg = dict(cfg, use_linear_in_transformer=True)
    a = unet_from_ldm(sd, lin_cfg, dtype=torch.float32)
    w = a.down_blocks[0].attentions[0].proj_in.weight
    assert w.dim() == 2 and torch.equal(w, sd["input_blocks.1.1.proj_in.weight"].float().reshape(w.shape))


def test_detect_unet_config_matches_fixture(comfy_fixture):
    sd, cfg, _ = comfy_fixture
    det = detect_unet_config(sd)
    for key in ("model_channels", "channel_mult", "num_res_blocks", "transformer_depth", "context_dim",
                "use_linear_in_transformer"):
        assert det[key] == cfg[key], key


@pytest.mark.parametrize("patch, words", [
    ({"adm_in_channels": 2816, "context_dim": 2048}, ["SDXL", "adm_in_channels=2816"]),
    ({"image_model": "flux"}, ["image_model", "flux", "SD1.x / SD2.x"]),
    ({"use_temporal_attention": True}, ["video UNet"]),
    ({"transformer_depth": [0, 0, 2, 2, 10, 10, 0, 0]}, ["transformer_depth", "SDXL"]),
    ({"in_channels": 9}, ["inpainting"]),
])
def test_unsupported_architectures_are_named(comfy_fixture, patch, words):
    _, cfg, _ = comfy_fixture
    with pytest.raises(UnsupportedModelError) as err:
        diffusers_config_from_unet_config({**cfg, **patch})
    for w in words:
        assert w in str(err.value)


def test_state_dict_that_does_not_fit_config_is_rejected(comfy_fixture):
    sd, cfg, _ = comfy_fixture
    with pytest.raises(UnsupportedModelError, match="shape"):
        unet_from_ldm(sd, {**cfg, "context_dim": 64})
    partial = {k: v for k, v in sd.items() if not k.startswith("output_blocks.11")}
    with pytest.raises(UnsupportedModelError, match="lacks"):
        unet_from_ldm(partial, cfg)
    with pytest.raises(UnsupportedModelError, match="no LDM UNet"):
        detect_unet_config({"conditioner.embedders.0.weight": torch.zeros(1)})
