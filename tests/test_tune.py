"""One-shot tuning: loss goes down, only chosen tensors change, inputs are never touched."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM, eval_loss
from tunevideo.modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS
from tunevideo.modules.training.trainable import parse_patterns, select_trainable
from tunevideo.modules.training.tune import TuneConfig, tune

FAST = dict(steps=12, learning_rate=1e-3, seed=0, gradient_checkpointing=False)


def _clip(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 3, 16, 16, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)


def test_short_tune_lowers_loss_and_changes_only_chosen_tensors(tiny_video_model):
    latents, ctx = _clip()
    before = {k: v.clone() for k, v in tiny_video_model.network.state_dict().items()}
    tuned, curve = tune(tiny_video_model, latents, ctx, TuneConfig(**FAST))
    assert len(curve) == FAST["steps"]
    assert eval_loss(tuned, latents, ctx) < eval_loss(tiny_video_model, latents, ctx)
    chosen = set(select_trainable(tiny_video_model.network, TuneConfig().trainable))
    assert tuned.tuned_names == chosen
    after = tuned.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == chosen  # every chosen tensor moved, nothing else did
    assert all(".attn1.to_q." in k or ".attn2.to_q." in k or ".attn_temp." in k for k in changed)
    orig = tiny_video_model.network.state_dict()
    assert all(torch.equal(before[k], orig[k]) for k in before)  # input untouched
    frozen = [k for k in after if k not in chosen]
    assert all(after[k].data_ptr() == orig[k].data_ptr() for k in frozen)  # frozen weights stay shared


def test_tune_is_deterministic_for_a_seed(tiny_video_model):
    latents, ctx = _clip()
    cfg = TuneConfig(**{**FAST, "steps": 3})
    _, a = tune(tiny_video_model, latents, ctx, cfg)
    _, b = tune(tiny_video_model, latents, ctx, cfg)
    assert a == b


def test_tune_inside_inference_mode_like_comfyui(tiny_video_model):
    latents, ctx = _clip()
    with torch.inference_mode():  # ComfyUI's executor; inputs are inference tensors
        latents, ctx = latents.clone(), ctx.clone()
        tuned, curve = tune(tiny_video_model, latents, ctx, TuneConfig(**{**FAST, "steps": 2}))
    assert all(torch.isfinite(torch.tensor(curve)))
    assert not any(p.requires_grad for p in tuned.network.parameters())


def test_interrupt_mid_tune_leaves_input_intact(tiny_video_model):
    latents, ctx = _clip()
    before = {k: v.clone() for k, v in tiny_video_model.network.state_dict().items()}
    flags = {k: p.requires_grad for k, p in tiny_video_model.network.named_parameters()}

    class Interrupted(Exception):
        pass

    def cb(step, total, info):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        tune(tiny_video_model, latents, ctx, TuneConfig(**FAST), callback=cb)
    after = tiny_video_model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: p.requires_grad for k, p in tiny_video_model.network.named_parameters()} == flags


def test_custom_patterns_and_errors(tiny_video_model):
    assert parse_patterns("tune-a-video", TUNE_A_VIDEO_PRESETS) == ("attn1.to_q", "attn2.to_q", "attn_temp")
    assert parse_patterns("attn_temp,\n norm_temp") == ("attn_temp", "norm_temp")
    names = select_trainable(tiny_video_model.network, ["mid_block.*.attn_temp"])
    assert names and all(n.startswith("mid_block.") and ".attn_temp." in n for n in names)
    with pytest.raises(ValueError, match="'attn9' matches no module"):
        select_trainable(tiny_video_model.network, ["attn9"])
    with pytest.raises(ValueError, match="must be one clip"):
        tune(tiny_video_model, torch.zeros(3, 4, 8, 8), torch.zeros(1, 7, CTX_DIM))
    with pytest.raises(ValueError, match="steps=0"):
        TuneConfig(steps=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_tune_on_gpu_tracks_fp32(tiny_video_model):
    latents, ctx = _clip()
    cfg = TuneConfig(**{**FAST, "steps": 4})
    _, fp32 = tune(tiny_video_model, latents, ctx, TuneConfig(**{**FAST, "steps": 4, "mixed_precision": "fp32"}),
                   device="cuda")
    tuned, bf16 = tune(tiny_video_model, latents, ctx, cfg, device="cuda")
    assert abs(bf16[0] - fp32[0]) < 0.05 * fp32[0]  # same first step up to bf16 rounding
    assert all(p.device.type == "cuda" for p in tuned.network.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_over_half_weights_runs_on_cpu_and_tracks_fp32(tiny_video_model, precision):
    """ComfyUI on a GPU holds the frozen UNet in fp16; the mixed-precision path (autocast, fp32 master copies of
    the trained tensors) runs under CPU autocast too, so CI covers it without a GPU."""
    g = torch.Generator().manual_seed(0)
    latents, ctx = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)
    half = tiny_video_model.replace(network=tiny_video_model.network.clone(dtype=torch.float16))
    cfg = dict(FAST, steps=3, gradient_checkpointing=True)
    _, fp32 = tune(half, latents, ctx, TuneConfig(**cfg, mixed_precision="fp32"))
    tuned, mixed = tune(half, latents, ctx, TuneConfig(**cfg, mixed_precision=precision))
    assert all(abs(a - b) < 0.05 * a for a, b in zip(fp32, mixed, strict=True))
    before, after = half.network.state_dict(), tuned.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Only trained tensors change (a few updates can round away in fp16 storage; nearly all must show).
    assert changed <= set(tuned.tuned_names) and len(changed) > 0.9 * len(tuned.tuned_names)
    assert all(v.dtype == torch.float16 for v in after.values())
