"""Null-text inversion (Video-P2P / Mokady et al.): the optimised embeddings retrace the inversion path."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, ddim_path, null_text_invert, reconstruct


def _setup(tiny_video_model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, 4, 2, 8, 8, generator=g)
    cond, uncond = torch.randn(1, 7, CTX_DIM, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)
    return tiny_video_model.model_fn(), x0, cond, uncond


def test_path_ends_where_ddim_inversion_ends(tiny_video_model):
    from tunevideo.modules.sampling.ddim import ddim_invert

    fn, x0, cond, _ = _setup(tiny_video_model)
    path = ddim_path(fn, tiny_video_model.schedule, x0, cond, steps=4)
    assert len(path) == 5 and torch.equal(path[0], x0)
    torch.testing.assert_close(path[-1], ddim_invert(fn, tiny_video_model.schedule, x0, cond, steps=4))


def test_optimised_null_text_retraces_the_inversion_path_better_than_the_plain_one(tiny_video_model):
    fn, x0, cond, uncond = _setup(tiny_video_model)
    sched, cfg = tiny_video_model.schedule, NullTextConfig(steps=4, inner_steps=6)
    before = (x0.clone(), cond.clone(), uncond.clone())
    result = null_text_invert(fn, sched, x0, cond, uncond, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, (x0, cond, uncond), strict=True))  # inputs untouched
    assert result.uncond.shape == (4, 7, CTX_DIM) and result.path.shape == (5, *x0.shape)
    assert not torch.equal(result.uncond[0], uncond[0])  # it learned
    rec = reconstruct(fn, sched, result, cond, cfg.cfg)
    plain = reconstruct(fn, sched, result.__class__(result.noise, uncond.expand(4, -1, -1), result.path), cond,
                        cfg.cfg)
    targets = [result.path[-2 - i] for i in range(4)]
    err = [float((a - b).pow(2).mean()) for a, b in zip(rec, targets, strict=True)]
    err_plain = [float((a - b).pow(2).mean()) for a, b in zip(plain, targets, strict=True)]
    # Step 0 starts from the same z_T on both sides: the optimised embedding lands closer to the path (the loss
    # went down), and the whole reconstruction stays closer to the clip than with the plain embedding.
    assert err[0] < 0.9 * err_plain[0]
    assert err[-1] < err_plain[-1]


def test_fast_mode_skips_optimisation_and_reverses_exactly(tiny_video_model):
    fn, x0, cond, uncond = _setup(tiny_video_model)
    result = null_text_invert(fn, tiny_video_model.schedule, x0, cond, uncond, NullTextConfig(steps=4), fast=True)
    assert result.uncond.shape[0] == 0 and result.losses == ()
    rec = reconstruct(fn, tiny_video_model.schedule, result, cond)
    assert len(rec) == 4 and torch.isfinite(rec[-1]).all()


def test_runs_under_inference_mode_and_reports_progress(tiny_video_model):
    fn, x0, cond, uncond = _setup(tiny_video_model)
    seen = []
    with torch.inference_mode():  # ComfyUI's executor
        x0, cond, uncond = x0.clone(), cond.clone(), uncond.clone()
        result = null_text_invert(fn, tiny_video_model.schedule, x0, cond, uncond,
                                  NullTextConfig(steps=2, inner_steps=2), callback=lambda s, n, i: seen.append((s, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and torch.isfinite(result.uncond).all()
    with pytest.raises(ValueError, match="cond must be"):
        null_text_invert(fn, tiny_video_model.schedule, x0, cond[0], uncond)
