"""AnimateDiff video base: original-layout motion modules, conversion, equality with diffusers' UNetMotionModel."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import CTX_DIM
from diffusers import MotionAdapter, UNetMotionModel
from safetensors.torch import save_file
from test_nodes import cond, fake_model
from tunevideo import NODE_CLASS_MAPPINGS, tiny
from tunevideo.modules.convert.unet import UnsupportedModelError
from tunevideo.modules.networks.animatediff import (
    ADAPTER_CONFIGS,
    build_motion_unet,
    inspect_motion_module,
    original_key,
    read_motion_module,
    to_diffusers,
    to_original,
)

F = 6


@pytest.fixture(scope="module")
def v2():
    return tiny.tiny_motion_module("v2", seed=1)


def reference_motion_model(unet2d, motion_sd, version):
    """diffusers' own route: MotionAdapter loaded from the converted weights + UNetMotionModel.from_unet2d (copies)."""
    info = inspect_motion_module(motion_sd)
    adapter = MotionAdapter(block_out_channels=info.block_out_channels, motion_layers_per_block=info.layers_per_block,
                            **ADAPTER_CONFIGS[version])
    adapter.load_state_dict(to_diffusers(motion_sd), strict=True)
    return UNetMotionModel.from_unet2d(unet2d, adapter).eval()


@pytest.mark.parametrize("version,frames,mid", [("v1", 24, False), ("v2", 32, True), ("v3", 32, False)])
def test_versions_are_recognised_and_conversion_round_trips(version, frames, mid):
    sd = tiny.tiny_motion_module(version)
    info = inspect_motion_module(sd, "mm.ckpt")
    assert (info.version, info.max_frames, info.mid_block, info.layers_per_block) == (version, frames, mid, 2)
    converted = to_diffusers(sd)
    back = to_original(converted)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # the converted dict is exactly a MotionAdapter's state dict (loads strictly, positional tables included)
    adapter = MotionAdapter(block_out_channels=info.block_out_channels, motion_layers_per_block=2,
                            **ADAPTER_CONFIGS[version])
    adapter.load_state_dict(converted, strict=True)


def test_original_key_names_module_paths_and_tensors():
    assert original_key("up_blocks.1.motion_modules.2.transformer_blocks.0.attn1.to_q") == \
        "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q"
    assert original_key("mid_block.motion_modules.0.proj_in.weight") == \
        "mid_block.motion_modules.0.temporal_transformer.proj_in.weight"
    assert original_key("down_blocks.0.motion_modules.1.transformer_blocks.0.norm3.bias") == \
        "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm.bias"


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_video_unet_equals_diffusers_unet_motion_model(tiny_unet2d, version):
    motion = tiny.tiny_motion_module(version, seed=2)
    ours = build_motion_unet(tiny_unet2d, motion)
    ref = reference_motion_model(tiny_unet2d, motion, version)
    x = torch.randn(2, 4, F, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 9, CTX_DIM, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    with torch.no_grad():
        got = ours(x, t, ctx)
        want = ref(x, t, ctx.repeat_interleave(F, 0)).sample
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    # the motion modules matter: without them (reference with zeroed motion output) the result differs
    assert (got - tiny_unet2d(x.permute(0, 2, 1, 3, 4).flatten(0, 1), 10, ctx.repeat_interleave(F, 0))
            .sample.unflatten(0, (2, F)).permute(0, 2, 1, 3, 4)).abs().max() > 1e-3


def test_2d_weights_are_shared_and_the_input_unet_is_untouched(tiny_unet2d, v2):
    before = {k: v.clone() for k, v in tiny_unet2d.state_dict().items()}
    flags = {k: p.requires_grad for k, p in tiny_unet2d.named_parameters()}
    video = build_motion_unet(tiny_unet2d, v2)
    assert video.conv_in.weight.data_ptr() == tiny_unet2d.conv_in.weight.data_ptr()
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert video.get_parameter(attn).data_ptr() == tiny_unet2d.get_parameter(attn).data_ptr()
    assert not any(p.requires_grad for p in video.parameters())
    assert {k: p.requires_grad for k, p in tiny_unet2d.named_parameters()} == flags
    assert all(torch.equal(v, before[k]) for k, v in tiny_unet2d.state_dict().items())
    clone = video.clone()
    assert clone.conv_in.weight is not video.conv_in.weight
    assert clone.conv_in.weight.data_ptr() == video.conv_in.weight.data_ptr()
    assert set(video.temporal_parameters()) == {k for k in video.state_dict() if ".motion_modules." in k
                                                and not k.endswith(".pe")}


def test_inference_mode_weights_build_and_train(tiny_unet2d, v2):
    """ComfyUI hands over weights made under inference_mode: the build must give autograd-usable tensors."""
    with torch.inference_mode():
        unet = tiny.tiny_unet2d()
        motion = {k: v.clone() for k, v in v2.items()}
    video = build_motion_unet(unet, motion)
    p = video.get_parameter("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight")
    p.requires_grad_(True)
    out = video(torch.randn(1, 4, 2, 8, 8), 5, torch.randn(1, 3, CTX_DIM))
    out.square().mean().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_safetensors_and_ckpt_files_load_the_same(tmp_path, v2):
    save_file(v2, str(tmp_path / "mm.safetensors"))
    torch.save({"state_dict": v2}, tmp_path / "mm.ckpt")
    a, b = read_motion_module(tmp_path / "mm.safetensors"), read_motion_module(tmp_path / "mm.ckpt")
    assert set(a) == set(b) == set(v2) and all(torch.equal(a[k], b[k]) for k in v2)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_ckpt_holding_code_is_refused_without_running_it(tmp_path, capsys):
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(ValueError, match="weights_only"):
        read_motion_module(tmp_path / "evil.ckpt")
    assert "pickled code ran" not in capsys.readouterr().out


def test_clear_errors_for_wrong_files(tmp_path, tiny_unet2d, v2):
    sdxl = {k: v for k, v in v2.items() if not k.startswith(("down_blocks.3", "up_blocks.3", "mid_block"))}
    with pytest.raises(UnsupportedModelError, match="SDXL"):
        inspect_motion_module(sdxl, "mm_sdxl_v10_beta.ckpt")
    with pytest.raises(UnsupportedModelError, match="not an AnimateDiff motion module"):
        inspect_motion_module({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, "sd15.safetensors")
    no_pe = {k: v for k, v in v2.items() if "pos_encoder" not in k}
    with pytest.raises(UnsupportedModelError, match="positional table"):
        inspect_motion_module(no_pe, "animatelcm.ckpt")
    (tmp_path / "mm.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        read_motion_module(tmp_path / "mm.txt")
    wider = tiny.tiny_unet2d({**tiny.TINY_UNET_CONFIG, "model_channels": 64})
    with pytest.raises(UnsupportedModelError, match="block widths"):
        build_motion_unet(wider, v2, "mm_sd_v15_v2.ckpt")


def test_clip_longer_than_the_positional_table_is_refused(tiny_unet2d):
    video = build_motion_unet(tiny_unet2d, tiny.tiny_motion_module("v1"), "mm_sd_v15.ckpt")
    with pytest.raises(ValueError, match="24 frames"):
        video(torch.randn(1, 4, 25, 8, 8), 5, torch.randn(1, 3, CTX_DIM))


def test_node_builds_a_video_unet_the_samplers_take(tmp_path, monkeypatch, tiny_unet_config, tiny_unet2d, v2):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    folder = tmp_path / "models" / "animatediff_models"
    folder.mkdir(parents=True)
    torch.save(v2, folder / "mm_tiny_v2.ckpt")
    node = NODE_CLASS_MAPPINGS["AnimateDiffVideoUNet"]
    assert "mm_tiny_v2.ckpt" in node.INPUT_TYPES()["required"]["motion_module"][0]
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        (video,) = node().build(fake_model(tiny_unet2d, tiny_unet_config), "mm_tiny_v2.ckpt")
    assert video.network.info.name == "mm_tiny_v2.ckpt" and video.network.info.version == "v2"
    # A random UNet's eps is ~1 and changes fast along the path; scaled down as in test_inversion, DDIM inversion
    # then sampling with the same prompt at cfg 1 must return to the source: both pack samplers run this base.
    net = video.network
    gentle = video.with_tensors({k: net.get_parameter(k) * 0.1 for k in ("conv_out.weight", "conv_out.bias")})
    # unit-variance latents once scaled by the model's latent scale, as real VAE latents are
    latent = {"samples": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)) / video.latent_scale}
    with torch.inference_mode():
        (noise,) = NODE_CLASS_MAPPINGS["DDIMInvertVideo"]().run(gentle, latent, cond(0), 10)
        (rec,) = NODE_CLASS_MAPPINGS["SampleVideo"]().run(gentle, cond(0), cond(0), noise, 10, 1.0, 0.0, 0)
    err = ((rec["samples"] - latent["samples"]).norm() / latent["samples"].norm()).item()
    assert err < 0.08, err  # measured 0.05 at 10 steps
    assert (noise["samples"] - latent["samples"]).norm() / latent["samples"].norm() > 0.5  # it did invert
