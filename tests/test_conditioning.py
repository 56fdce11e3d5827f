"""Conditioning as ComfyUI composes it: prompts of different token counts, several entries, refused extras."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo import NODE_CLASS_MAPPINGS as N
from tunevideo.modules.sampling.conditioning import combined_outputs, entry_outputs, repeat_to_length
from tunevideo.modules.sampling.ddim import ddim_invert, sample


def ctx(tokens, seed, dim=CTX_DIM):
    return torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(seed))


def entry(tokens, seed, **options):
    return [ctx(tokens, seed), {"pooled_output": torch.zeros(1, CTX_DIM), **options}]


@pytest.fixture()
def fn(tiny_video_model):
    model = tiny_video_model.model_fn()

    def call(x, t, c):  # one context for the whole batch, as the engine allows
        return model(x, t, c.expand(x.shape[0], -1, -1))

    return call


def x_and_t():
    return torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([500])


def test_repeating_tokens_leaves_the_output_unchanged(fn):
    """Why ComfyUI may pad by repetition: every key appears k times, so softmax attention is unchanged."""
    x, t = x_and_t()
    c = ctx(77, 0)
    torch.testing.assert_close(fn(x, t, repeat_to_length(c, 154)), fn(x, t, c), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple"):
        repeat_to_length(c, 100)


def test_batched_entries_of_different_lengths_equal_separate_calls(fn):
    x, t = x_and_t()
    contexts = [ctx(154, 1), ctx(77, 2), ctx(231, 3), ctx(77 * 5, 4)]
    calls = []

    def counting(xs, tt, c):
        calls.append(c.shape[:2])
        return fn(xs, tt, c)

    outs = entry_outputs(counting, x, t, contexts)
    for c, out in zip(contexts, outs, strict=True):
        torch.testing.assert_close(out, fn(x, t, c), rtol=0, atol=1e-5)
    # 154, 77 and 231 share one batch at lcm 462 (6x 77 > 4x: so 231 cannot join 77); 385 = 5x 77 is alone.
    assert sorted(tuple(s) for s in calls) == sorted([(4, 154), (2, 231), (2, 385)])


def test_entries_are_averaged_by_strength(fn):
    x, t = x_and_t()
    a, b, u = ctx(77, 1), ctx(154, 2), ctx(77, 3)
    (avg,) = combined_outputs(fn, x, t, [[(a, 1.0), (b, 3.0)]])
    torch.testing.assert_close(avg, (fn(x, t, a) + 3 * fn(x, t, b)) / 4, rtol=0, atol=1e-5)
    single = combined_outputs(fn, x, t, [[(u, 1.0)], [(a, 2.0)]])
    torch.testing.assert_close(single[0], fn(x, t, u), rtol=0, atol=1e-5)
    torch.testing.assert_close(single[1], fn(x, t, a), rtol=0, atol=1e-5)


def test_guided_sampling_with_a_long_prompt_equals_unbatched_guidance(tiny_video_model, fn):
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cond, uncond = ctx(154, 1), ctx(77, 2)
    out = sample(fn, tiny_video_model.schedule, x, cond, uncond, steps=3, cfg=7.5)

    ref = x.clone()
    ts = tiny_video_model.schedule.ddim_timesteps(3).tolist()
    from tunevideo.modules.sampling.schedule import ddim_move

    for i, t in enumerate(ts):
        tt = torch.tensor([t])
        u, c = fn(ref, tt, uncond), fn(ref, tt, cond)
        eps = u + 7.5 * (c - u)
        ref = ddim_move(tiny_video_model.schedule, ref, eps, t, ts[i + 1] if i + 1 < len(ts) else -1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    inv = ddim_invert(fn, tiny_video_model.schedule, x, [(cond, 1.0), (uncond, 1.0)], steps=2)
    assert inv.shape == x.shape and torch.isfinite(inv).all()


@pytest.fixture()
def video(tiny_unet2d, tiny_unet_config):
    from test_nodes import fake_model

    with torch.inference_mode():
        return N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))[0]


def test_sample_node_takes_154_token_prompts_on_both_sides(video):
    """CLIP Text Encode gives a 60-word prompt 154 tokens and an empty one 77 (the crash of issue 8)."""
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with torch.inference_mode():
        (long_neg,) = N["SampleVideo"]().run(video, [entry(154, 1)], [entry(231, 2)], latent, 2, 7.5, 0.0, 3)
        (short_neg,) = N["SampleVideo"]().run(video, [entry(154, 1)], [entry(77, 2)], latent, 2, 7.5, 0.0, 3)
        (noise,) = N["DDIMInvertVideo"]().run(video, latent, [entry(154, 4)], steps=2)
        tuned, _ = N["OneShotTune"]().run(video, latent, [entry(154, 5)], steps=1, learning_rate=1e-4, seed=0,
                                          trainable="tune-a-video", custom_patterns="", batch_size=1,
                                          gradient_checkpointing=False, mixed_precision="auto")
    for out in (long_neg, short_neg, noise):
        assert torch.isfinite(out["samples"]).all()
    assert not torch.equal(long_neg["samples"], short_neg["samples"])


def test_combined_conditioning_is_averaged_not_concatenated(video):
    """Conditioning (Combine) -> two entries whose predictions KSampler averages; Concat -> one longer entry."""
    fn = video.model_fn()
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    a, b = entry(77, 1), entry(77, 2, strength=3.0)
    with torch.inference_mode():
        (combined,) = N["DDIMInvertVideo"]().run(video, latent, [a, b], steps=3)
        x0 = latent["samples"].permute(1, 0, 2, 3)[None] * video.latent_scale
        want = ddim_invert(fn, video.schedule, x0, [(a[0], 1.0), (b[0], 3.0)], steps=3)
        concat = ddim_invert(fn, video.schedule, x0, torch.cat([a[0], b[0]], dim=1), steps=3)
    got = combined["samples"].permute(1, 0, 2, 3)[None] * video.latent_scale
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - concat).abs().max() > 1e-3


@pytest.mark.parametrize("key,value", [("control", object()), ("area", (8, 8, 0, 0)), ("mask", torch.ones(1, 8, 8)),
                                       ("gligen", ("position", None, [])), ("hooks", object()),
                                       ("start_percent", 0.5), ("some_future_key", 1)])
def test_entries_with_what_video_sampling_cannot_honour_are_refused(video, key, value):
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with torch.inference_mode(), pytest.raises(ValueError, match=f"positive: entry 1 carries '{key}'"):
        N["SampleVideo"]().run(video, [entry(77, 1), entry(77, 2, **{key: value})], [entry(77, 3)], latent, 1,
                               7.5, 0.0, 0)


def test_harmless_entry_options_are_accepted_and_tuning_wants_one_entry(video):
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    full_range = entry(77, 1, start_percent=0.0, end_percent=1.0, control=None)
    with torch.inference_mode():
        N["SampleVideo"]().run(video, [full_range], [entry(77, 3)], latent, 1, 7.5, 0.0, 0)
        with pytest.raises(ValueError, match="strength 0.0"):
            N["SampleVideo"]().run(video, [entry(77, 1, strength=0.0)], [entry(77, 3)], latent, 1, 7.5, 0.0, 0)
        with pytest.raises(ValueError, match="positive has 2 entries .*Conditioning \\(Concat\\)"):
            N["OneShotTune"]().run(video, latent, [entry(77, 1), entry(77, 2)], steps=1, learning_rate=1e-4,
                                   seed=0, trainable="tune-a-video", custom_patterns="", batch_size=1,
                                   gradient_checkpointing=False, mixed_precision="auto")
