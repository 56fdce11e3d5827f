"""MotionDirector dual-path LoRA: what trains, what stays frozen, the debiased loss, files the ecosystem reads."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from conftest import CTX_DIM
from safetensors import safe_open
from test_nodes import cond
from tunevideo import NODE_CLASS_MAPPINGS, tiny
from tunevideo.modules.methods.motion_director import MotionDirectorConfig, debiased_loss, train
from tunevideo.modules.networks.animatediff import build_motion_unet
from tunevideo.modules.networks.inflate import inflate_unet
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.modules.training import lora as L
from tunevideo.modules.video_unet import VideoUNet
from tunevideo.nodes.boundary import INVERTED_KEY

N = NODE_CLASS_MAPPINGS
FAST = dict(rank=2, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def motion_file():
    return tiny.tiny_motion_module("v2", seed=3)


@pytest.fixture(scope="module")
def ad_model(motion_file):
    unet = build_motion_unet(tiny.tiny_unet2d(), motion_file, "mm_tiny.ckpt")
    return VideoUNet(unet, NoiseSchedule.scaled_linear())


def clip(seed, frames=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, 8, 8, generator=g), torch.randn(1, 5, CTX_DIM, generator=g)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def test_debiased_loss_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 5, 3, 3, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)
    beta, anchor = 0.7, 3
    alpha = (beta ** 2 + 1) ** 0.5
    terms = [((alpha * pred[:, :, j] - beta * pred[:, :, anchor])
              - (alpha * target[:, :, j] - beta * target[:, :, anchor])).pow(2).mean() for j in range(5)]
    torch.testing.assert_close(debiased_loss(pred, target, anchor, beta), torch.stack(terms).mean())
    # An error shared by every frame (appearance, not motion) is down-weighted by (alpha - beta)^2 = 0.17 (beta 1),
    # while an error in one frame only keeps its weight alpha^2 = 2 on the other frames.
    shared = 0.5 * torch.randn(2, 4, 1, 3, 3, generator=g)
    plain = (shared ** 2).mean()
    torch.testing.assert_close(debiased_loss(target + shared, target, anchor), (2 ** 0.5 - 1) ** 2 * plain)


def test_only_lora_targets_change_and_the_input_is_untouched(ad_model):
    before = snapshot(ad_model)
    x, c = clip(0)
    res = train(ad_model, [x], [c], MotionDirectorConfig(steps=3, lr_spatial=1e-2, lr_temporal=1e-2, **FAST))
    assert all(torch.equal(v, before[k]) for k, v in ad_model.network.state_dict().items())
    assert not L.lora_layers(ad_model.network)  # peft never touched the input's modules
    merged = L.merge(L.merge(ad_model, res.temporal), res.spatial[0])
    changed = {k for k, v in merged.network.state_dict().items() if not torch.equal(v, before[k])}
    # every layer whose LoRA moved from its zero init, and nothing else (at 8x8 latents the mid block sees 1 token,
    # where attention ignores q and k: those LoRAs get no gradient and stay zero)
    layers = {**res.temporal.layers, **res.spatial[0].layers}
    assert changed == {f"{p}.weight" for p, (_, up) in layers.items() if up.abs().sum() > 0}
    assert len(changed) > 0.9 * len(layers)
    assert all(re.fullmatch(L.TEMPORAL_TARGETS["animatediff"], p) for p in res.temporal.layers)
    assert all(re.fullmatch(L.SPATIAL_TARGETS, p) and ".motion_modules." not in p for p in res.spatial[0].layers)
    assert any(".attn2." in p for p in res.temporal.layers)  # both temporal attentions, as the reference
    assert not any(".attn2." in p for p in res.spatial[0].layers)  # cross-attention stays out of the spatial LoRA
    assert all(up.abs().sum() > 0 for p, (_, up) in res.temporal.layers.items())  # trained (up starts at zero)


def test_the_temporal_path_never_changes_the_spatial_lora(ad_model):
    """With the spatial path run every step, the spatial LoRA of a dual-path run is bit-identical to one trained
    alone: the temporal path (which uses it) leaves it untouched."""
    x, c = clip(1)
    cfg = dict(steps=4, lr_spatial=1e-2, lr_temporal=1e-2, dropout=0.0, spatial_skip_prob=0.0, **FAST)
    both = train(ad_model, [x], [c], MotionDirectorConfig(**cfg))
    alone = train(ad_model, [x], [c], MotionDirectorConfig(paths="spatial", **cfg))
    assert alone.temporal is None
    for path, (down, up) in both.spatial[0].layers.items():
        other = alone.spatial[0].layers[path]
        assert torch.equal(down, other[0]) and torch.equal(up, other[1])
    moved = [bool(up.abs().sum() > 0) for _, up in both.spatial[0].layers.values()]
    assert sum(moved) > 0.9 * len(moved)  # it did train (mid-block q/k at one token get no gradient)


def test_loss_goes_down_and_runs_repeat_per_seed(ad_model):
    x, c = clip(2)
    cfg = MotionDirectorConfig(steps=24, lr_spatial=3e-3, lr_temporal=3e-3, seed=5, **FAST)
    a = train(ad_model, [x], [c], cfg)
    assert sum(a.temporal_losses[-6:]) < sum(a.temporal_losses[:6])
    b = train(ad_model, [x], [c], cfg)
    assert a.temporal_losses == b.temporal_losses
    assert all(torch.equal(a.temporal.layers[p][1], b.temporal.layers[p][1]) for p in a.temporal.layers)
    spatial = [v for v in a.spatial_losses if v == v]
    assert 0 < len(spatial) < 24  # the spatial path is skipped on some steps (p = 0.2)


def test_multi_video_gives_one_spatial_lora_per_video_and_steps_each_in_turn(ad_model):
    (x0, c0), (x1, c1) = clip(3), clip(4, frames=2)
    res = train(ad_model, [x0, x1], [c0, c1], MotionDirectorConfig(steps=2, spatial_skip_prob=0.0, **FAST))
    assert len(res.spatial) == 2 and res.spatial[1].metadata["video_index"] == "1"
    # step 0 trains video 0's spatial LoRA, step 1 video 1's: both moved from their zero init
    assert all(any(up.abs().sum() > 0 for _, up in s.layers.values()) for s in res.spatial)


def test_interrupt_leaves_the_input_intact(ad_model):
    before = snapshot(ad_model)
    x, c = clip(5)

    def stop(step, total, info):
        if step == 2:
            raise InterruptedError("cancel")

    with pytest.raises(InterruptedError):
        train(ad_model, [x], [c], MotionDirectorConfig(steps=5, **FAST), callback=stop)
    assert all(torch.equal(v, before[k]) for k, v in ad_model.network.state_dict().items())
    assert not L.lora_layers(ad_model.network)


def test_files_round_trip_and_use_the_ecosystem_layouts(tmp_path, ad_model, motion_file):
    x, c = clip(6)
    res = train(ad_model, [x], [c], MotionDirectorConfig(steps=2, lr_temporal=1e-2, lr_spatial=1e-2, **FAST),
                prompt="a person is skiing")
    L.save_lora(res.temporal, tmp_path / "motion.safetensors")
    L.save_lora(res.spatial[0], tmp_path / "spatial.safetensors")
    with pytest.raises(FileExistsError):
        L.save_lora(res.temporal, tmp_path / "motion.safetensors")
    with safe_open(str(tmp_path / "motion.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert meta["method"] == "motion-director" and meta["kind"] == "temporal" and meta["prompts"]
    # AnimateDiff-Evolved's motion-LoRA rule (animatediff/model_injection.py, load_motion_lora_as_patches): keep keys
    # with "temporal", take the ".down." ones, strip "processor." "_lora" "down." and map "to_out." to "to_out.0.".
    for key in keys:
        assert "temporal" in key
        if ".down." in key:
            target = key.replace("processor.", "").replace("_lora", "").replace("down.", "")
            if "to_out." in target and "to_out.0." not in target:
                target = target.replace("to_out.", "to_out.0.")
            assert target in motion_file, target
    with safe_open(str(tmp_path / "spatial.safetensors"), "pt") as f:
        skeys = list(f.keys())
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in skeys
    for kind, name, lora in (("temporal", "motion", res.temporal), ("spatial", "spatial", res.spatial[0])):
        loaded = L.load_lora(tmp_path / f"{name}.safetensors", ad_model.network, kind)
        a, b = L.merge(ad_model, lora, 0.7), L.merge(ad_model, loaded, 0.7)
        for key in lora.deltas():
            torch.testing.assert_close(a.network.get_parameter(key), b.network.get_parameter(key), rtol=0, atol=1e-6)
    inflated = VideoUNet(inflate_unet(tiny.tiny_unet2d()),
                          NoiseSchedule.scaled_linear())
    with pytest.raises(ValueError, match="AnimateDiffVideoUNet"):
        L.load_lora(tmp_path / "motion.safetensors", inflated.network, "temporal")


def test_inflated_base_trains_attn_temp_loras(tiny_video_model):
    x, c = clip(7)
    res = train(tiny_video_model, [x], [c], MotionDirectorConfig(steps=2, **FAST))
    assert res.temporal.base == "inflated" and all(".attn_temp." in p for p in res.temporal.layers)
    assert all(".attn_temp." not in p and ".attn1." in p or ".ff." in p for p in res.spatial[0].layers)


def test_nodes_train_save_load_and_mix_noise(tmp_path, monkeypatch, ad_model):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    latent = {"samples": torch.cat([clip(8)[0][0].permute(1, 0, 2, 3), clip(9)[0][0].permute(1, 0, 2, 3)])}
    with torch.inference_mode():
        out = N["SpatialTemporalLoRATrain"]().run(ad_model, latent, cond(0), 3, 2, 2, 1e-3, 1e-3, 0,
                                                  "spatial+temporal", False, "fp32", 0.0, "a person is skiing")
        video, temporal, spatial, spatial_img, temporal_img = out
        assert len(spatial) == 2 and temporal.kind == "temporal" and temporal_img.shape[-1] == 3
        (paths,) = N["SaveVideoLoRA"]().save(temporal, "md/run")
        (spaths,) = N["SaveVideoLoRA"]().save(spatial, "md/run")
    assert paths == "md/run_temporal_00001.safetensors"
    assert spaths.splitlines() == ["md/run_spatial_v0_00001.safetensors", "md/run_spatial_v1_00001.safetensors"]
    assert (tmp_path / "models" / "animatediff_motion_lora" / paths).is_file()
    assert (tmp_path / "models" / "loras" / spaths.splitlines()[0]).is_file()
    # output_spatial_strength 0: the returned model is the input + the temporal LoRA only; loading the file agrees
    (loaded,) = N["LoadVideoLoRA"]().load(ad_model, f"motion/{paths}", 1.0)
    for key in temporal.deltas():
        torch.testing.assert_close(loaded.network.get_parameter(key), video.network.get_parameter(key),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="frames_per_video"):
        N["SpatialTemporalLoRATrain"]().run(ad_model, latent, cond(0), 4, 1, 2, 1e-3, 1e-3, 0,
                                            "spatial+temporal", False, "fp32")
    inv = {"samples": torch.randn(3, 4, 8, 8), INVERTED_KEY: {"steps": 5, "frames": 3}}
    (p0,) = N["MotionNoisePrior"]().mix(inv, 0.0, 7)
    (p1,) = N["MotionNoisePrior"]().mix(inv, 1.0, 7)
    torch.testing.assert_close(p1["samples"], inv["samples"])
    fresh = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(7))[0].permute(1, 0, 2, 3)
    torch.testing.assert_close(p0["samples"], fresh)
    assert p0[INVERTED_KEY]["frames"] == 3
    with pytest.raises(ValueError, match="DDIMInvertVideo"):
        N["MotionNoisePrior"]().mix({"samples": torch.randn(3, 4, 8, 8)}, 0.5, 0)


def test_a_tuned_animatediff_unet_saves_and_reloads_as_a_delta(tmp_path, ad_model, tiny_video_model):
    from tunevideo.modules.deltas import BaseMismatchError, load_delta, save_delta

    x, c = clip(10)
    res = train(ad_model, [x], [c], MotionDirectorConfig(steps=1, paths="temporal", lr_temporal=1e-2, **FAST))
    tuned = L.merge(ad_model, res.temporal)
    meta = save_delta(tuned, tmp_path / "d.safetensors")
    assert meta["attention"] == "animatediff" and meta["motion_module"] == "mm_tiny.ckpt"
    back = load_delta(ad_model, tmp_path / "d.safetensors")
    assert all(torch.equal(back.network.get_parameter(k), tuned.network.get_parameter(k))
               for k in res.temporal.deltas())
    with pytest.raises(ValueError, match="AnimateDiffVideoUNet"):
        load_delta(tiny_video_model, tmp_path / "d.safetensors", check_base=False)
    other = VideoUNet(build_motion_unet(tiny.tiny_unet2d(), tiny.tiny_motion_module("v2", seed=9), "other.ckpt"),
                       NoiseSchedule.scaled_linear())
    with pytest.raises(BaseMismatchError, match="motion module"):
        load_delta(other, tmp_path / "d.safetensors")


def test_one_prompt_per_video_through_conditioning_combine(ad_model):
    from tunevideo.nodes.motion_director import video_prompts

    two = cond(0) + cond(1)  # what Conditioning (Combine) makes: a list of entries
    contexts = video_prompts(two, 2, ad_model)
    assert torch.equal(contexts[0], cond(0)[0][0]) and torch.equal(contexts[1], cond(1)[0][0])
    assert all(torch.equal(c, cond(0)[0][0]) for c in video_prompts(cond(0), 3, ad_model))
    with pytest.raises(ValueError, match="one per video"):
        video_prompts(two, 3, ad_model)


def test_image_animation_spatial_lora_from_one_image_plus_a_motion_lora(ad_model):
    """Sec. 5 'animating images': a spatial LoRA learnt on one image, applied with a temporal LoRA from a video."""
    x, c = clip(11)
    motion = train(ad_model, [x], [c], MotionDirectorConfig(steps=1, paths="temporal", **FAST)).temporal
    image = x[:, :, :1]  # one frame
    with pytest.raises(ValueError, match="at least 2 frames"):
        train(ad_model, [image], [c], MotionDirectorConfig(steps=1, **FAST))
    res = train(ad_model, [image], [c], MotionDirectorConfig(steps=2, paths="spatial", lr_spatial=1e-2, **FAST))
    assert res.temporal is None and all(v == v for v in res.spatial_losses)  # the spatial path ran every step
    animated = L.merge(L.merge(ad_model, res.spatial[0], 0.8), motion, 1.0)
    keys = {*res.spatial[0].deltas(), *motion.deltas()}
    before = dict(ad_model.network.named_parameters())
    changed = {k for k, p in animated.network.named_parameters() if not torch.equal(p, before[k])}
    assert changed <= keys and len(changed) > 0.9 * len(keys)


def test_spatial_targets_are_the_image_transformers_only():
    """As MotionDirector's injector picks them on its own base (diffusers UNet3DConditionModel; compared in the closing
    note of issue 10): temporal transformers named ``temp_attentions`` are not spatial."""
    assert re.fullmatch(L.SPATIAL_TARGETS, "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0")
    assert re.fullmatch(L.SPATIAL_TARGETS, "mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    assert not re.fullmatch(L.SPATIAL_TARGETS, "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_q")
    assert not re.fullmatch(L.SPATIAL_TARGETS, "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q")


def test_nan_lora_training_stops_with_a_clear_error_and_writes_nothing(tmp_path, monkeypatch, ad_model):
    """Issue 19: lr 0.1 (the declared max) in fp16, 3 steps, rank 4 gave a LoRA of NaNs that SaveVideoLoRA wrote.
    CPU fp16 autocast need not diverge, so the loss is forced non-finite; the loop must stop and say what to try."""
    from tunevideo.modules.methods import motion_director as MDM

    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    real = MDM._forward
    monkeypatch.setattr(MDM, "_forward", lambda *a: real(*a) * float("nan"))
    latent = {"samples": clip(8)[0][0].permute(1, 0, 2, 3)}
    with torch.inference_mode(), pytest.raises(ValueError, match=r"MotionDirector: the loss became nan at step "
                                                                  r"1/3 \(precision fp16\).*lower learning rate"):
        N["SpatialTemporalLoRATrain"]().run(ad_model, latent, cond(0), 0, 3, 4, 0.1, 0.1, 0, "spatial+temporal",
                                            False, "fp16")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_savers_refuse_non_finite_loras_and_empty_prefixes(tmp_path, monkeypatch, ad_model):
    monkeypatch.setenv("TUNEVIDEO_HOME", str(tmp_path))
    x, c = clip(0)
    res = train(ad_model, [x], [c], MotionDirectorConfig(steps=1, **FAST))
    key, (down, up) = next(iter(res.temporal.layers.items()))
    broken = dataclasses.replace(res.temporal, layers={**res.temporal.layers, key: (down, up + float("nan"))})
    with pytest.raises(ValueError, match="NaN/infinite values.*nothing was written.*lower learning rate"):
        N["SaveVideoLoRA"]().save(broken, "md/nan")
    with pytest.raises(ValueError, match="NaN/infinite"):
        L.save_lora(broken, tmp_path / "direct.safetensors")
    with pytest.raises(ValueError, match="filename_prefix must not be empty"):
        N["SaveVideoLoRA"]().save(res.temporal, "")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="strength=nan must be a finite number"):
        N["ApplyVideoLoRA"]().apply(ad_model, res.temporal, float("nan"))
