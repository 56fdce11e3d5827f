"""Context windows for long clips (issue 18): the windows cover every frame and their weights never vanish
(modules/sampling/windows.py); fusion is the exact weighted average; every window attends to frame 0 of the whole
clip (modules/sampling/anchor.py); one window equals the windowless path bit for bit on every denoising path; bad
inputs fail naming the input."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from einops import rearrange
from tunevideo.modules.methods.dreamix import corrupted_sample
from tunevideo.modules.methods.video_p2p.control import AttentionController, EditControl
from tunevideo.modules.methods.video_p2p.edit import p2p_sample
from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, null_text_invert_video
from tunevideo.modules.networks.inflate import ATTENTION_VARIANTS, VideoTransformerBlock
from tunevideo.modules.sampling.anchor import FrameAnchor, anchor_scope
from tunevideo.modules.sampling.ddim import ddim_invert, sample
from tunevideo.modules.sampling.windows import ContextWindows, Window, fusion_shares, windowed


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 23, 40, 97])
@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("length,overlap", [(16, 4), (8, 0), (8, 7), (1, 0)])
def test_windows_cover_every_frame_with_the_stated_overlap(frames, closed_loop, length, overlap):
    w = ContextWindows(length, overlap, closed_loop=closed_loop)
    spans = w.spans(frames)
    assert set().union(*map(set, spans)) == set(range(frames))
    size = min(length, frames)
    assert all(len(s) == size and len(set(s)) == size for s in spans)
    if not closed_loop:
        assert all(s == list(range(s[0], s[0] + size)) for s in spans)
        assert spans[0][0] == 0 and spans[-1][-1] == frames - 1
    for a, b in zip(spans, spans[1:], strict=False):
        assert len(set(a) & set(b)) >= overlap  # neighbours share at least the overlap


def test_window_longer_than_the_clip_is_the_clip():
    assert ContextWindows(16, 4).spans(10) == [list(range(10))]
    assert ContextWindows(16, 4, closed_loop=True).spans(16) == [list(range(16))]


def test_strides_and_closed_loop_wrap():
    assert ContextWindows(8, 2).spans(20) == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    assert ContextWindows(8, 2).spans(18)[-1] == list(range(10, 18))  # last window moved back to the end
    loop = ContextWindows(8, 2, closed_loop=True).spans(18)
    assert loop == [[(s + j) % 18 for j in range(8)] for s in (0, 6, 12)]


def test_weights():
    assert torch.equal(ContextWindows(fuse="flat").weights(5), torch.ones(5))
    assert ContextWindows(fuse="pyramid").weights(5).tolist() == [1, 2, 3, 2, 1]
    assert ContextWindows(fuse="pyramid").weights(4).tolist() == [1, 2, 2, 1]
    assert ContextWindows(fuse="pyramid").weights(1).tolist() == [1]
    assert ContextWindows().weights(16).dtype == torch.float32


@pytest.mark.parametrize("kwargs,needle", [
    (dict(length=8, overlap=8), "context_overlap=8"),
    (dict(length=8, overlap=9), "context_overlap=9"),
    (dict(length=0), "context_length=0"),
    (dict(overlap=-1), "context_overlap=-1"),
    (dict(fuse="gauss"), "fuse_method='gauss'"),
])
def test_bad_options_fail_naming_the_input(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        ContextWindows(**kwargs)


def test_window_longer_than_a_motion_table_fails_naming_the_input():
    w = ContextWindows(32, 4)
    with pytest.raises(ValueError, match=r"context: context_length=32 .* table of 24 frames"):
        w.check(frames=100, max_frames=24)
    w.check(frames=20, max_frames=24)  # clamped to the clip: fits the table
    with pytest.raises(ValueError, match="my_input"):
        w.check(max_frames=16, name="my_input")


# --------------------------------------------------------------------------------------- fusion (windowed wrapper)
def _toy(x, t, context):
    """A stand-in model whose output at a frame depends on every frame of the clip it is given."""
    return torch.tanh(x) * (1 + x.mean(dim=2, keepdim=True)) + 1e-3 * t.float() + context.mean()


def _direct_fusion(outs, spans, weights, frames):
    """The weighted average per frame, computed frame by frame from the windows' outputs."""
    result = []
    for j in range(frames):
        held = [(out[:, :, span.index(j)], w[span.index(j)]) for out, span, w in zip(outs, spans, weights,
                                                                                      strict=True) if j in span]
        total = sum(w for _, w in held)
        result.append(sum(w / total * o for o, w in held))
    return torch.stack(result, dim=2)


@pytest.mark.parametrize("fuse", ["flat", "pyramid"])
def test_fusion_of_two_overlapping_windows_is_the_weighted_average(fuse):
    w = ContextWindows(8, 4, fuse=fuse)
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(2, 4, 12, 3, 3, generator=g), torch.randn(2, 5, 6, generator=g), torch.tensor([7])
    spans = w.spans(12)
    assert spans == [list(range(0, 8)), list(range(4, 12))]
    outs = [_toy(x[:, :, s], t, ctx) for s in spans]
    want = _direct_fusion(outs, spans, [w.weights(8)] * 2, 12)
    got = windowed(_toy, w)(x, t, ctx)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(got[:, :, :4], outs[0][:, :, :4]) and torch.equal(got[:, :, 8:], outs[1][:, :, 4:])
    if fuse == "flat":
        torch.testing.assert_close(got[:, :, 4:8], (outs[0][:, :, 4:] + outs[1][:, :, :4]) / 2, rtol=0, atol=1e-6)


def test_fusion_closed_loop_wraps_and_the_network_windows_share_the_anchor(tiny_video_model):
    """With the tiny inflated UNet: the fused output is the weighted average of each window run as a clip with the
    whole clip's frame-0 anchor (recorded while the first window runs)."""
    w = ContextWindows(3, 1, fuse="pyramid", closed_loop=True)
    fn = tiny_video_model.model_fn()
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 4, 5, 8, 8, generator=g), torch.randn(1, 7, CTX_DIM, generator=g), torch.tensor([500])
    spans = w.spans(5)
    assert spans == [[0, 1, 2], [2, 3, 4], [4, 0, 1]]
    anchor, outs = FrameAnchor(), []
    with torch.no_grad():
        for k, span in enumerate(spans):
            anchor.recording = k == 0
            with anchor_scope(anchor):
                outs.append(fn(x[:, :, span], t, ctx))
        got = windowed(fn, w)(x, t, ctx)
    torch.testing.assert_close(got, _direct_fusion(outs, spans, [w.weights(3)] * 3, 5), rtol=0, atol=1e-6)
    with torch.no_grad():
        plain = [fn(x[:, :, s], t, ctx) for s in spans]  # each window on its own first frame: not the anchor
    assert (plain[1] - outs[1]).abs().max() > 1e-4


def test_shares_of_a_frame_sum_to_one():
    w = ContextWindows(5, 2, closed_loop=True)
    spans = w.spans(11)
    totals = torch.zeros(11)
    for span, share in zip(spans, fusion_shares(w, spans, 11), strict=True):
        totals[span] += share
    torch.testing.assert_close(totals, torch.ones(11))


# ------------------------------------------------------------------------------------------------ the global anchor
def _attn1(video_unet):
    return next(m.attn1 for m in video_unet.network.modules() if isinstance(m, VideoTransformerBlock))


@pytest.mark.parametrize("variant", ["tune-a-video", "video-p2p"])
def test_a_window_attends_to_the_clip_frame_zero_through_the_anchor(tiny_video_model, variant):
    """Processor level: frames 2, 3 of a 4-frame clip, run as a window with the anchor of frame 0, see the same keys
    as in the whole clip (first-frame attention: every frame; sparse-causal: frames whose previous frame is in the
    window)."""
    attn = _attn1(tiny_video_model)
    proc = ATTENTION_VARIANTS[variant]()
    hs = torch.randn(4, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))  # (b f) n c, b = 1
    with torch.no_grad():
        full = proc(attn, hs, num_frames=4)
        anchor = FrameAnchor()
        proc(attn, hs[:2], num_frames=2, anchor=anchor)  # the window holding frame 0 records
        anchor.recording = False
        window = proc(attn, hs[2:], num_frames=2, anchor=anchor)
        alone = proc(attn, hs[2:], num_frames=2)
    same = slice(0, 2) if variant == "video-p2p" else slice(1, 2)
    torch.testing.assert_close(window[same], full[2:][same], rtol=0, atol=1e-6)
    assert (alone[same] - full[2:][same]).abs().max() > 1e-4  # without the anchor the window drifts


class _Spy:
    """Wraps an ``attn1`` processor and records what it is called with."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames=1, frame_size=None, anchor=None):
        self.calls.append((attn, hidden_states, num_frames, anchor, anchor.recording if anchor is not None else None))
        return self.inner(attn, hidden_states, num_frames=num_frames, frame_size=frame_size, anchor=anchor)


def test_every_window_sparse_causal_attention_reads_frame_zero_of_the_whole_clip(tiny_video_model):
    network = tiny_video_model.network.clone()
    calls = []
    for m in network.modules():
        if isinstance(m, VideoTransformerBlock):
            m.attn1.set_processor(_Spy(m.attn1.processor, calls))
    fn = tiny_video_model.replace(network=network).model_fn(windows=ContextWindows(3, 1))
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(2, 4, 7, 8, 8, generator=g), torch.randn(2, 7, CTX_DIM, generator=g)
    with torch.no_grad():
        fn(x, torch.tensor([300]), ctx)
    layers = sum(isinstance(m, VideoTransformerBlock) for m in network.modules())
    spans = ContextWindows(3, 1).spans(7)
    assert len(spans) == 3 and len(calls) == 3 * layers
    first = {attn: hs for attn, hs, _, _, rec in calls[:layers]}
    assert all(rec is True for *_, rec in calls[:layers]) and all(rec is False for *_, rec in calls[layers:])
    for attn, hs, f, anchor, _ in calls[layers:]:
        assert f == 3 and anchor is calls[0][3]  # one anchor for the whole call
        k0, v0 = anchor.exchange(attn, hs.new_zeros(2, hs.shape[1], attn.to_k.out_features),
                                 hs.new_zeros(2, hs.shape[1], attn.to_v.out_features))
        frame0 = rearrange(first[attn], "(b f) n c -> b f n c", f=3)[:, 0]  # clip frame 0 (window 0 = frames 0..2)
        with torch.no_grad():
            torch.testing.assert_close(k0, attn.to_k(frame0))  # up to the matmul's blocking
            torch.testing.assert_close(v0, attn.to_v(frame0))


# ---------------------------------------------------------------------------- one window = today's result, bit for bit
def _clip(f=3, size=8, seed=0, tokens=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, f, size, size, generator=g), torch.randn(1, tokens, CTX_DIM, generator=g), \
        torch.randn(1, tokens, CTX_DIM, generator=g)


ONE_WINDOW = [ContextWindows(3, 1), ContextWindows(16, 4, "flat", True)]  # the clip has 3 frames


@pytest.mark.parametrize("context", ONE_WINDOW)
def test_one_window_is_bit_identical_for_inversion_sampling_and_dreamix(tiny_video_model, context):
    x0, cond, uncond = _clip()
    s, plain, win = tiny_video_model.schedule, tiny_video_model.model_fn(), tiny_video_model.model_fn(windows=context)
    assert torch.equal(ddim_invert(win, s, x0, uncond, 4), ddim_invert(plain, s, x0, uncond, 4))
    runs = [sample(fn, s, x0, cond, uncond, 4, cfg=7.5, eta=0.3, generator=torch.Generator().manual_seed(0))
            for fn in (win, plain)]
    assert torch.equal(*runs)
    a, _ = corrupted_sample(win, s, x0, cond, uncond, 0.6, 5, generator=torch.Generator().manual_seed(3))
    b, _ = corrupted_sample(plain, s, x0, cond, uncond, 0.6, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_one_window_is_bit_identical_for_null_text_and_video_p2p(tiny_video_model):
    context = ContextWindows(2, 1)  # the clip has 2 frames
    video = tiny_video_model.replace(network=tiny_video_model.network.with_attention("video-p2p"))
    x0, src, empty = _clip(f=2, size=8, tokens=77)
    edit = src.clone()
    edit[:, 3] *= 5
    config = NullTextConfig(steps=2, inner_steps=1)
    inv = null_text_invert_video(video, x0, src, empty, config, windows=context)
    ref = null_text_invert_video(video, x0, src, empty, config)
    assert torch.equal(inv.noise, ref.noise) and torch.equal(inv.uncond, ref.uncond)
    word = torch.zeros(77)
    word[3] = 1
    ctl = EditControl(word_swap=False, mapper=torch.arange(77), alphas=torch.ones(77), blend_src=word,
                      blend_edit=word, blend_threshold=0.5, start_blend=0.0)
    out, masks, controller = p2p_sample(video.network, video.schedule, inv.noise, src, edit, empty, ctl, steps=2,
                                        null_text=inv.uncond, windows=context)
    want, want_masks, want_controller = p2p_sample(video.network, video.schedule, ref.noise, src, edit, empty, ctl,
                                                   steps=2, null_text=ref.uncond)
    assert torch.equal(out, want) and len(masks) == len(want_masks) > 0
    assert all(torch.equal(m, n) for m, n in zip(masks, want_masks, strict=True))
    assert all(torch.equal(controller.state.store[k], v) for k, v in want_controller.state.store.items())


# ------------------------------------------------------------------------------------------- many windows, every path
def test_video_p2p_with_windows_keeps_attention_per_frame_of_the_clip(tiny_video_model):
    video = tiny_video_model.replace(network=tiny_video_model.network.with_attention("video-p2p"))
    x0, src, empty = _clip(f=5, size=8, tokens=77)
    edit = src.clone()
    edit[:, 3] *= 5
    context = ContextWindows(3, 1)
    inv = null_text_invert_video(video, x0, src, empty, NullTextConfig(steps=2, inner_steps=1), windows=context)
    word = torch.zeros(77)
    word[3] = 1
    ctl = EditControl(word_swap=False, mapper=torch.arange(77), alphas=torch.ones(77), blend_src=word,
                      blend_edit=word, blend_threshold=0.5, start_blend=0.0)
    seen = []
    out, masks, controller = p2p_sample(video.network, video.schedule, inv.noise, src, edit, empty, ctl, steps=2,
                                        null_text=inv.uncond, windows=context, on_window=seen.append)
    assert out.shape == (2, 4, 5, 8, 8) and torch.isfinite(out).all()
    assert [w.frames for w in seen[:2]] == [(0, 1, 2), (2, 3, 4)] and len(seen) == 4  # 2 windows x 2 steps
    assert all(m.shape == (2, 1, 5, 8, 8) for m in masks) and masks
    assert all(v.shape[1] == 5 for v in controller.state.store.values())
    assert torch.equal((out[1] - out[0]) * (1 - masks[-1][1]), torch.zeros_like(out[1]))


def test_controller_keeps_each_frame_as_the_share_weighted_sum_of_its_windows():
    ctl = EditControl(word_swap=False, mapper=torch.arange(4), alphas=torch.ones(4))
    controller = AttentionController(ctl, steps=2)
    w = ContextWindows(3, 1, fuse="pyramid")
    spans = w.spans(5)
    shares = fusion_shares(w, spans, 5)
    maps = [torch.rand(2, 3, 1, 2, 4, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    for k, (span, share) in enumerate(zip(spans, shares, strict=True)):
        controller.enter_window(Window(k, 2, tuple(span), share, 5))
        controller.keep("layer", maps[k])
    got = controller.state.store["layer"]
    assert got.shape == (2, 5, 1, 2, 4)
    torch.testing.assert_close(got[:, :2], maps[0][:, :2])
    torch.testing.assert_close(got[:, 2], shares[0][2] * maps[0][:, 2] + shares[1][0] * maps[1][:, 0])
    torch.testing.assert_close(got[:, 3:], maps[1][:, 1:])


def test_sampling_and_inversion_run_in_windows_on_both_bases(tiny_video_model):
    from tunevideo import tiny
    from tunevideo.modules.networks.animatediff import build_motion_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.video_unet import VideoUNet

    motion = VideoUNet(build_motion_unet(tiny.tiny_unet2d(), tiny.tiny_motion_module("v2", seed=4)),
                       NoiseSchedule.scaled_linear())
    x0, cond, uncond = _clip(f=6)
    for video in (tiny_video_model, motion):
        seen = []
        fn = video.model_fn(windows=ContextWindows(4, 2), on_window=seen.append)
        x_t = ddim_invert(fn, video.schedule, x0, uncond, 2)
        out = sample(fn, video.schedule, x_t, cond, uncond, 2, cfg=5.0)
        assert out.shape == x0.shape and torch.isfinite(out).all()
        assert {w.frames for w in seen} == {(0, 1, 2, 3), (2, 3, 4, 5)}


def test_window_longer_than_a_motion_table_fails_naming_context():
    from tunevideo import tiny
    from tunevideo.modules.networks.animatediff import build_motion_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.video_unet import VideoUNet

    motion = VideoUNet(build_motion_unet(tiny.tiny_unet2d(), tiny.tiny_motion_module("v2", seed=4)),
                       NoiseSchedule.scaled_linear())
    table = motion.network.max_frames
    fn = motion.model_fn(windows=ContextWindows(table + 1, 4))
    x = torch.zeros(1, 4, table + 8, 8, 8)
    with pytest.raises(ValueError, match=rf"context: context_length={table + 1} is longer than the motion module's "
                                         rf"table of {table} frames"):
        fn(x, torch.tensor([10]), torch.zeros(1, 7, CTX_DIM))
    assert tiny_video_max_frames_is_unbounded()


def tiny_video_max_frames_is_unbounded():
    from tunevideo import tiny
    from tunevideo.modules.networks.inflate import inflate_unet

    return inflate_unet(tiny.tiny_unet2d()).max_frames is None

