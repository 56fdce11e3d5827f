"""Dreamix: frame batches equal the image model, frozen temporal weights, the mix ratio, corrupted-video inference."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo.modules.methods.dreamix import (
    DREAMIX_PRESETS,
    DreamixConfig,
    as_image_batch,
    corrupt_frames,
    corrupted_sample,
    dreamix_finetune,
    image_to_coarse_video,
    mix_schedule,
    stack_images,
    start_of,
)
from tunevideo.modules.networks.inflate import VideoTransformerBlock, inflate_unet
from tunevideo.modules.sampling.ddim import sample

FAST = {"gradient_checkpointing": False, "learning_rate": 1e-3, "seed": 0}


def _clip(f=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, f, size, size, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)


def _active_temporal(video):
    with torch.no_grad():
        for block in video.modules():
            if isinstance(block, VideoTransformerBlock):
                block.attn_temp.to_out[0].weight.normal_(0, 0.1)
    return video


@pytest.mark.parametrize("temporal", ["tune-a-video", "ei2-stam"])
def test_frame_batch_with_temporal_bypassed_equals_the_2d_unet(tiny_unet2d, temporal):
    video = _active_temporal(inflate_unet(tiny_unet2d, temporal=temporal))
    x, c = _clip()
    xs, cs = as_image_batch(x, c)
    t = torch.tensor([300])
    with torch.no_grad():
        got = video(xs, t, cs, temporal=False)[:, :, 0]
        ref = tiny_unet2d(xs[:, :, 0], t, cs).sample
        on = video(xs, t, cs)[:, :, 0]  # one frame per clip, temporal layers on: they act (to_out is not zero)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    if temporal == "tune-a-video":  # STAM centres over frames: on one frame it adds nothing even when on
        assert (on - ref).abs().max() > 1e-3


def test_temporal_weights_stay_bit_identical_through_frame_batches(tiny_video_model):
    x, c = _clip(f=2, size=8)
    tuned, curve = dreamix_finetune(tiny_video_model, x, c,
                                    DreamixConfig(steps=2, trainable=("*",), image_ratio=1.0, **FAST))
    before, after = tiny_video_model.network.state_dict(), tuned.network.state_dict()
    temporal = set(tiny_video_model.network.temporal_parameters())
    assert all(torch.equal(before[k], after[k]) for k in temporal)
    assert sum(not torch.equal(before[k], after[k]) for k in before if k not in temporal) > 100  # spatial learned
    assert len(curve) == 2


def test_mix_ratio_is_respected_and_drives_the_loop(tiny_video_model):
    for ratio in (0.0, 0.3, 1.0):
        sched = mix_schedule(4000, ratio, seed=7)
        assert abs(sched.float().mean().item() - ratio) < 4 * (ratio * (1 - ratio) / 4000) ** 0.5 + 1e-9
        assert torch.equal(sched, mix_schedule(4000, ratio, seed=7))
    assert not torch.equal(mix_schedule(64, 0.5, 1), mix_schedule(64, 0.5, 2))
    seen = []
    x, c = _clip(f=2, size=8)
    config = DreamixConfig(steps=4, trainable=("attn_temp",), image_ratio=0.5, **FAST)
    dreamix_finetune(tiny_video_model, x, c, config, callback=lambda s, n, info: seen.append(info["frames_only"]))
    assert seen == mix_schedule(4, 0.5, 0).tolist() and True in seen and False in seen


def _recording_model():
    calls = []

    def fn(x, t, context):
        calls.append(x.clone())
        return torch.zeros_like(x)
    return fn, calls


def test_strength_one_is_pure_noise_and_zero_returns_the_encoded_video(tiny_video_model):
    # Strength 0.5 keeps the source: the start correlates with it; strength 1 is noise in distribution.
    sched = tiny_video_model.schedule
    x0 = 3.0 + 2.0 * torch.randn(1, 4, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    fn, calls = _recording_model()
    _, t0 = corrupted_sample(fn, sched, x0, torch.zeros(1, 7, CTX_DIM), None, 1.0, steps=10, cfg=1.0,
                             generator=torch.Generator().manual_seed(0))
    x_start, pure = calls[0], torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert t0 == int(sched.ddim_timesteps(10)[0]) and len(calls) == 10
    assert abs(x_start.mean() - pure.mean()) < 0.02 and abs(x_start.std() - pure.std()) < 0.02
    fn, calls = _recording_model()
    corrupted_sample(fn, sched, x0, torch.zeros(1, 7, CTX_DIM), None, 0.5, steps=10)
    assert len(calls) == 5 and torch.corrcoef(torch.stack([calls[0].flatten(), x0.flatten()]))[0, 1] > 0.5
    fn, calls = _recording_model()
    out, t0 = corrupted_sample(fn, sched, x0, torch.zeros(1, 7, CTX_DIM), None, 0.0, steps=10)
    assert t0 == -1 and not calls and torch.equal(out, x0)
    assert start_of(sched, 50, 0.5) == (25, int(sched.ddim_timesteps(50)[25]))
    with pytest.raises(ValueError, match="noise_strength=1.5"):
        start_of(sched, 50, 1.5)
    with pytest.raises(ValueError, match="noise_strength=-0.1"):
        corrupted_sample(fn, sched, x0, torch.zeros(1, 7, CTX_DIM), None, -0.1)


def test_partial_sampling_continues_the_full_loop(tiny_video_model):
    fn = tiny_video_model.model_fn()
    x, c = _clip(f=1, size=8)
    seen = []
    full = sample(fn, tiny_video_model.schedule, x, c, None, steps=4, cfg=1.0,
                  callback=lambda i, n, info: seen.append(info["timestep"]))
    partial = sample(fn, tiny_video_model.schedule, x, c, None, steps=4, cfg=1.0, start_step=2)
    tail = sample(fn, tiny_video_model.schedule, x, c, None, steps=4, cfg=1.0, start_step=4)
    assert torch.equal(tail, x) and not torch.allclose(partial, full)
    seen_partial = []
    sample(fn, tiny_video_model.schedule, x, c, None, steps=4, cfg=1.0, start_step=2,
           callback=lambda i, n, info: seen_partial.append(info["timestep"]))
    assert seen_partial == seen[2:]


def test_corruption_keeps_only_coarse_space_and_time():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 32, 48, 3, generator=g)
    out = corrupt_frames(frames, spatial=4, temporal=2)
    assert out.shape == frames.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[1], out[0]) and torch.equal(out[3], out[2]) and not torch.equal(out[2], out[0])
    assert torch.equal(corrupt_frames(frames, 1, 1), frames)
    flat = torch.full((2, 16, 16, 3), 0.4)
    torch.testing.assert_close(corrupt_frames(flat, 8), flat)
    assert (corrupt_frames(frames, 4) - frames).abs().mean() > 0.1  # fine detail removed
    with pytest.raises(ValueError, match="spatial_downsample=0"):
        corrupt_frames(frames, 0)
    with pytest.raises(ValueError, match="temporal_downsample=1.5"):
        corrupt_frames(frames, 2, 1.5)


def test_camera_motions_turn_one_image_into_a_coarse_video():
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    still = image_to_coarse_video(image, 4, "none")
    assert still.shape == (4, 32, 32, 3)
    torch.testing.assert_close(still, image.expand(4, -1, -1, -1), rtol=0, atol=1e-5)
    zoom = image_to_coarse_video(image, 4, "zoom-in", 0.5)
    torch.testing.assert_close(zoom[0], image, rtol=0, atol=1e-5)  # starts at the image, then zooms
    assert (zoom[-1] - image).abs().mean() > 0.05
    for motion in ("zoom-out", "pan-left", "pan-down", "perspective"):
        clip = image_to_coarse_video(image[None], 3, motion, 0.3)
        assert clip.shape == (3, 32, 32, 3) and not torch.allclose(clip[0], clip[-1])
    with pytest.raises(ValueError, match="camera_motion='spin'"):
        image_to_coarse_video(image, 4, "spin")
    with pytest.raises(ValueError, match="batch of 2"):
        image_to_coarse_video(torch.rand(2, 8, 8, 3), 4)


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="image_ratio=1.5"):
        DreamixConfig(image_ratio=1.5)
    with pytest.raises(ValueError, match="image_ratio=-0.2"):
        mix_schedule(4, -0.2, 0)
    with pytest.raises(ValueError, match=r"images mixes image sizes \(16x16, 16x24"):
        stack_images([torch.rand(16, 16, 3), torch.rand(1, 16, 24, 3)])
    assert stack_images([torch.rand(16, 16, 3), torch.rand(2, 16, 16, 3)]).shape == (3, 16, 16, 3)


def test_lora_preset_merges_into_attention_projections_only(tiny_video_model):
    x, c = _clip(f=2, size=8)
    config = DreamixConfig(steps=2, trainable=("attn2.to_q", "attn2.to_v"), lora_rank=2, image_ratio=0.5, **FAST)
    tuned, _ = dreamix_finetune(tiny_video_model, x, c, config)
    before, after = tiny_video_model.network.state_dict(), tuned.network.state_dict()
    assert before.keys() == after.keys()  # merged: no adapter tensors remain
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2.to_q.weight" in k or ".attn2.to_v.weight" in k for k in changed)
    assert changed <= set(tuned.tuned_names)


def test_dreamix_nodes_under_inference_mode(tiny_unet2d, tiny_unet_config):
    from test_nodes import N, cond, fake_model

    frames = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = {"samples": torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))}
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
        tuned, curve = N["DreamixFinetune"]().run(video, latent, cond(0), 2, 1e-3, 0, 0.5, "dreamix-lora", "",
                                                  2, False, "fp32")
        (degraded,) = N["DreamixCorruptVideo"]().run(frames, 4, 2)
        out, t0 = N["DreamixCorruptedSample"]().run(tuned, cond(1), cond(2), latent, 0.0, 4, 3.0, 0)
        _, t_half = N["DreamixCorruptedSample"]().run(tuned, cond(1), cond(2), latent, 0.5, 4, 3.0, 0)
        (clip,) = N["ImageToCoarseVideo"]().run(frames[:1], 4, "pan-right", 0.2)
        (stack,) = N["StackSubjectImages"]().run([frames[:1], frames[1:]])
    assert tuned.history[-1].method == "dreamix" and curve.shape[-1] == 3 and video.tuned_names == frozenset()
    assert degraded.shape == frames.shape and torch.equal(degraded[1], degraded[0])
    assert t0 == -1 and torch.allclose(out["samples"], latent["samples"], atol=1e-6)
    assert t_half == int(video.schedule.ddim_timesteps(4)[2])
    assert clip.shape == (4, 64, 64, 3) and stack.shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="images mixes image sizes"):
        N["StackSubjectImages"]().run([frames[:1], torch.rand(1, 32, 64, 3)])
    with pytest.raises(ValueError, match="image_ratio=2.0"):
        N["DreamixFinetune"]().run(video, latent, cond(0), 1, 1e-3, 0, 2.0, "dreamix-full", "", 2, False, "fp32")
    with pytest.raises(ValueError, match="noise_strength=1.2"):
        N["DreamixCorruptedSample"]().run(tuned, cond(1), cond(2), latent, 1.2, 4, 3.0, 0)


def test_dreamix_on_the_animatediff_base():
    """The AnimateDiff base provides the same switch: frame batches skip the motion modules (= the image model), and
    mixed finetuning with every weight trainable leaves the motion modules bit-identical when all steps are frames."""
    from tunevideo import tiny
    from tunevideo.modules.networks.animatediff import build_motion_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.video_unet import VideoUNet

    unet2d = tiny.tiny_unet2d()
    model = VideoUNet(build_motion_unet(unet2d, tiny.tiny_motion_module("v2", seed=4)), NoiseSchedule.scaled_linear())
    x, c = _clip(f=3, size=8)
    frames, ctx = as_image_batch(x, c)
    with torch.no_grad():
        got = model.network(frames, 10, ctx, temporal=False)[:, :, 0]
        want = unet2d(frames[:, :, 0], 10, ctx).sample
        video = model.network(x, 10, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (video[0, :, 0] - got[0]).abs().max() > 1e-3  # with the motion modules the output differs
    motion = {k: v.clone() for k, v in model.network.temporal_parameters().items()}
    tuned, _ = dreamix_finetune(model, x, c, DreamixConfig(steps=2, trainable=("*",), image_ratio=1.0, **FAST))
    params = dict(tuned.network.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in motion.items())
    assert not torch.equal(params["conv_in.weight"], model.network.conv_in.weight)
    # the attention preset (written for the inflated UNet's attn_temp) selects the motion modules' attentions here
    config = DreamixConfig(steps=1, trainable=DREAMIX_PRESETS["dreamix-attention"], image_ratio=0.0, **FAST)
    tuned, _ = dreamix_finetune(model, x, c, config)
    changed = {k for k, p in tuned.network.named_parameters() if not torch.equal(p, model.network.get_parameter(k))}
    assert any(".motion_modules." in k and ".attn2." in k for k in changed)
