"""Long clips, tuning and IO side (issue 18, points 3 and 4): each tuning step trains on one window of the clip, frames
are read, encoded and decoded in batches into one buffer."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import CTX_DIM, eval_loss
from tunevideo import NODE_CLASS_MAPPINGS, tiny
from tunevideo.modules.build import decode_latents, encode_frames
from tunevideo.modules.files import video_io
from tunevideo.modules.methods.dreamix import DreamixConfig, dreamix_finetune
from tunevideo.modules.methods.motion_director import MotionDirectorConfig
from tunevideo.modules.methods.motion_director import train as md_train
from tunevideo.modules.networks.animatediff import build_motion_unet
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.modules.sampling.windows import ContextWindows
from tunevideo.modules.training import memory
from tunevideo.modules.training.clip_windows import take_frames, window_schedule
from tunevideo.modules.training.trainable import select_trainable
from tunevideo.modules.training.tune import StepBatch, TuneConfig, tune
from tunevideo.modules.video_unet import VideoUNet
from tunevideo.nodes.boundary import check_tuned_frames

N = NODE_CLASS_MAPPINGS
FAST = dict(learning_rate=1e-3, seed=0, gradient_checkpointing=False)


def _clip(f, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, f, size, size, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)


def _same_run(a, b):
    (ma, ca), (mb, cb) = a, b
    assert ca == cb
    sa, sb = ma.network.state_dict(), mb.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma.history == mb.history


def test_one_window_covering_the_clip_tunes_as_today_bit_for_bit(tiny_video_model):
    latents, ctx = _clip(4)
    today = tune(tiny_video_model, latents, ctx, TuneConfig(steps=2, **FAST))
    for windows in (ContextWindows(length=16, overlap=4), ContextWindows(length=4, overlap=2)):  # longer, as long
        _same_run(today, tune(tiny_video_model, latents, ctx, TuneConfig(steps=2, windows=windows, **FAST)))
    # Dreamix's mixed batches compose with the windows in the same way (steps: frames, video)
    mixed = dict(steps=2, image_ratio=0.5, seed=1, learning_rate=1e-3, gradient_checkpointing=False)
    _same_run(dreamix_finetune(tiny_video_model, latents, ctx, DreamixConfig(**mixed)),
              dreamix_finetune(tiny_video_model, latents, ctx, DreamixConfig(**mixed, windows=ContextWindows(8, 2))))


def test_each_step_trains_on_one_window_and_the_schedule_covers_the_clip(tiny_video_model):
    f, windows = 20, ContextWindows(length=8, overlap=2)
    stride = windows.length - windows.overlap
    latents, ctx = _clip(f)
    seen, infos = [], []

    def spy(step, video, context):
        seen.append(video.clone())
        return StepBatch(video, context)

    steps = math.ceil(f / stride)
    config = TuneConfig(steps=steps, windows=windows, **FAST)
    tuned, _ = tune(tiny_video_model, latents, ctx, config, batches=spy, callback=lambda s, n, i: infos.append(i))
    assert all(v.shape == (1, 4, windows.length, 8, 8) for v in seen)
    covered = set()
    for v, info in zip(seen, infos, strict=True):
        first, last = info["window"]
        assert last - first + 1 == windows.length
        assert torch.equal(v, latents[:, :, first:last + 1])  # the window's own frames
        covered |= set(range(first, last + 1))
    assert covered == set(range(f))  # every frame within ceil(F / stride) steps
    n = len(windows.spans(f))
    assert sorted(window_schedule(n, n, seed=0)) == list(range(n))  # each cycle is a permutation of the windows
    assert window_schedule(n, 12, seed=0) == window_schedule(n, 12, seed=0)
    assert any(window_schedule(n, 12, seed=0) != window_schedule(n, 12, seed=s) for s in range(1, 5))
    # the record keeps the clip's frames: the tuned model accepts that clip's inverted noise
    assert tuned.history[-1].frames == f
    check_tuned_frames(f, tuned, "noise")
    with pytest.raises(ValueError, match="tuned on 20 frames"):
        check_tuned_frames(windows.length, tuned, "noise")


def test_closed_loop_windows_wrap_around():
    x = torch.arange(10.0).view(1, 1, 10, 1, 1)
    span = ContextWindows(length=4, overlap=1, closed_loop=True).spans(10)[-1]
    assert take_frames(x, span).flatten().tolist() == [float(i) for i in span] and span[-1] < span[0]
    assert take_frames(x, list(range(10))) is x


def test_windowed_tuning_lowers_the_loss_and_leaves_frozen_weights_untouched(tiny_video_model):
    latents, ctx = _clip(9)
    windows = ContextWindows(length=3, overlap=0)
    before = {k: v.clone() for k, v in tiny_video_model.network.state_dict().items()}
    tuned, curve = tune(tiny_video_model, latents, ctx, TuneConfig(steps=9, windows=windows, **FAST))
    assert len(curve) == 9
    assert eval_loss(tuned, latents, ctx) < eval_loss(tiny_video_model, latents, ctx)
    chosen = set(select_trainable(tiny_video_model.network, TuneConfig().trainable))
    after, orig = tuned.network.state_dict(), tiny_video_model.network.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == chosen
    assert all(torch.equal(before[k], orig[k]) for k in before)  # the input model untouched
    assert all(after[k].data_ptr() == orig[k].data_ptr() for k in after if k not in chosen)  # frozen: shared


@pytest.fixture(scope="module")
def short_table_model():
    """The tiny AnimateDiff base with a 4-frame positional table (the published ones hold 24 or 32)."""
    motion = {k: (v[:, :4].contiguous() if k.endswith("pos_encoder.pe") else v)
              for k, v in tiny.tiny_motion_module("v2", seed=2).items()}
    return VideoUNet(build_motion_unet(tiny.tiny_unet2d(), motion, "mm_short.ckpt"), NoiseSchedule.scaled_linear())


def test_animatediff_base_tunes_a_clip_longer_than_its_table_through_windows(short_table_model):
    model = short_table_model
    assert model.network.max_frames == 4
    latents, ctx = _clip(10)
    with pytest.raises(ValueError, match=r"latent has 10 frames.*table of 4 frames.*'context'"):
        tune(model, latents, ctx, TuneConfig(steps=1, **FAST))
    with pytest.raises(ValueError, match=r"context: context_length=6 is longer than the motion module's table"):
        tune(model, latents, ctx, TuneConfig(steps=1, windows=ContextWindows(6, 2), **FAST))
    motion = {k: v.clone() for k, v in model.network.temporal_parameters().items()}
    tuned, curve = tune(model, latents, ctx, TuneConfig(steps=3, trainable=("motion_modules",),
                                                        windows=ContextWindows(4, 1), **FAST))
    assert all(math.isfinite(v) for v in curve) and tuned.history[-1].frames == 10
    params = dict(tuned.network.named_parameters())
    assert any(not torch.equal(params[k], v) for k, v in motion.items())  # the motion module learnt
    # MotionDirector's dual-path LoRA training takes the same windows (SpatialTemporalLoRATrain's context)
    config = MotionDirectorConfig(steps=2, rank=2, gradient_checkpointing=False, windows=ContextWindows(4, 1))
    result = md_train(model, [latents], [ctx], config)
    assert all(math.isfinite(v) for v in result.temporal_losses) and result.record.frames == 10
    with pytest.raises(ValueError, match=r"latent \(clip 0\) has 10 frames"):
        md_train(model, [latents], [ctx], MotionDirectorConfig(steps=1, rank=2, gradient_checkpointing=False))


def test_memory_estimates_use_the_window(tiny_video_model):
    net, shape = tiny_video_model.network, (1, 4, 96, 8, 8)
    windowed = memory.tune_estimate(net, shape, TuneConfig(windows=ContextWindows(16, 4)), "cpu")
    assert windowed == memory.tune_estimate(net, (1, 4, 16, 8, 8), TuneConfig(), "cpu")
    assert windowed.activations < memory.tune_estimate(net, shape, TuneConfig(), "cpu").activations
    lora = memory.lora_train_estimate(net, [shape], 1, True, 2, False, "fp32", "cpu", ContextWindows(16, 4))
    assert lora == memory.lora_train_estimate(net, [(1, 4, 16, 8, 8)], 1, True, 2, False, "fp32", "cpu")


def test_tuning_nodes_take_an_optional_context(tiny_unet2d, tiny_unet_config):
    from test_nodes import cond, fake_model

    for node in ("OneShotTune", "DreamixFinetune", "SpatialTemporalLoRATrain"):
        assert N[node].INPUT_TYPES()["optional"]["context"][0] == "VIDEO_CONTEXT"
    (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
    latent = {"samples": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    args = dict(steps=1, learning_rate=1e-3, seed=0, trainable="tune-a-video", custom_patterns="", batch_size=1,
                gradient_checkpointing=False, mixed_precision="auto")
    with torch.inference_mode():
        plain, _ = N["OneShotTune"]().run(video, latent, cond(1), **args)
        covering, _ = N["OneShotTune"]().run(video, latent, cond(1), **args, context=ContextWindows(8, 2))
        windowed, _ = N["OneShotTune"]().run(video, latent, cond(1), **args, context=ContextWindows(2, 1))
    a, b = plain.network.state_dict(), covering.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert windowed.history[-1].frames == 4
    with pytest.raises(ValueError, match="context must be a VIDEO_CONTEXT"):
        N["OneShotTune"]().run(video, latent, cond(1), **args, context="16")


# ------------------------------------------------------------------------------------------------ point 4: frame IO
@pytest.fixture(scope="module")
def tiny_vae():
    _, vae, _ = tiny.tiny_modules(seed=0)
    return vae.eval()


def _encode_as_before(vae, frames, scale, chunk=8):
    """The former encode_frames (chunks joined with torch.cat), kept here to show the new one is bit-identical."""
    out = []
    with torch.no_grad():
        for part in frames.split(chunk):
            out.append(vae.encode(part.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean.float())
    return (torch.cat(out) * scale).permute(1, 0, 2, 3)[None]


def _decode_as_before(vae, latents, scale, chunk=8):
    frames = []
    with torch.no_grad():
        for part in (latents[0].permute(1, 0, 2, 3) / scale).split(chunk):
            img = vae.decode(part).sample.float()
            frames.append(((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
    return torch.cat(frames)


def test_vae_batches_equal_one_batch_and_todays_result(tiny_vae):
    frames = torch.rand(11, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    calls = []
    lat = encode_frames(tiny_vae, frames, 0.18215, chunk=4, callback=lambda *a: calls.append(a[:2]))
    assert lat.shape == (1, 4, 11, 4, 4) and calls == [(4, 11), (8, 11), (11, 11)]
    assert torch.equal(lat, _encode_as_before(tiny_vae, frames, 0.18215, chunk=4))
    torch.testing.assert_close(lat, encode_frames(tiny_vae, frames, 0.18215, chunk=11), rtol=1e-5, atol=1e-6)
    out = decode_latents(tiny_vae, lat, 0.18215, chunk=4)
    assert out.shape == (11, 32, 32, 3)
    assert torch.equal(out, _decode_as_before(tiny_vae, lat, 0.18215, chunk=4))
    torch.testing.assert_close(out, decode_latents(tiny_vae, lat, 0.18215, chunk=11), rtol=1e-5, atol=1e-6)


LONG_FRAMES, LONG_SIZE = 160, 256


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "input" / "long.mp4"
    path.parent.mkdir()
    ramp = torch.linspace(0, 1, LONG_FRAMES).view(-1, 1, 1, 1)
    video_io.write_video(ramp.expand(-1, LONG_SIZE, LONG_SIZE, 3), path, fps=24)
    return path


def test_load_video_clip_of_a_long_clip_holds_one_output_buffer(long_clip):
    """Peak resident memory of LoadVideoClip on 160 frames of 256x256 (a 120 MiB result), measured in a fresh
    process: one buffer plus decoding scratch, where joining per-frame tensors held the result twice."""
    script = textwrap.dedent(f"""
        import resource, torch
        from tunevideo.nodes.video import LoadVideoClip
        node = LoadVideoClip()
        node.load("long.mp4", 0, 2, 1, {LONG_SIZE}, {LONG_SIZE})  # libraries and decoder warmed up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        frames, fps = node.load("long.mp4", 0, {LONG_FRAMES}, 1, {LONG_SIZE}, {LONG_SIZE})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(tuple(frames.shape), frames.untyped_storage().nbytes(), (after - before) * 1024)
    """)
    env = {**os.environ, "TUNEVIDEO_HOME": str(long_clip.parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    shape, storage, grown = run.stdout.split(")")[0] + ")", *map(int, run.stdout.split(")")[1].split())
    result = LONG_FRAMES * LONG_SIZE * LONG_SIZE * 3 * 4
    assert shape == f"({LONG_FRAMES}, {LONG_SIZE}, {LONG_SIZE}, 3)" and storage == result  # no slack
    assert grown < 1.5 * result, f"peak grew by {grown / 2**20:.0f} MiB for a {result / 2**20:.0f} MiB result"


def test_read_video_reports_progress_and_equals_per_frame_resizing(long_clip):
    calls = []
    frames, _ = video_io.read_video(long_clip, start=3, count=20, stride=2, width=64, height=48,
                                    callback=lambda *a: calls.append(a[:2]))
    assert calls == [(8, 20), (16, 20), (20, 20)]
    picked = [torch.from_numpy(a).unsqueeze(0).float() / 255.0
              for a in video_io.iter_frames(long_clip, start=3, stride=2, count=20)]
    want = torch.cat([video_io.resize_center_crop(p, 64, 48) for p in picked])
    assert torch.equal(frames, want)  # what read_video returned before: per-frame resizes joined


def test_windows_without_frame_0_train_with_the_clips_frame_0_as_anchor(tiny_video_model, monkeypatch):
    """Tuning on windows uses the anchor windowed sampling uses: a step on a window that does not hold frame 0
    first records frame 0's keys/values from the clip's first window, then its sparse-causal attention reads them."""
    from tunevideo.modules.sampling.anchor import FrameAnchor
    from tunevideo.modules.sampling.windows import ContextWindows
    from tunevideo.modules.training import tune as T

    recorded, read = [], []
    real_record, real_exchange = T.record_anchor, FrameAnchor.exchange

    def spy_record(unet, schedule, first, *args, **kwargs):
        recorded.append(first.clone())
        return real_record(unet, schedule, first, *args, **kwargs)

    def spy_exchange(self, layer, key, value):
        out = real_exchange(self, layer, key, value)
        if not self.recording:
            read.append(torch.equal(out[0], self._kv[layer][0]) and not torch.equal(out[0], key))
        return out

    monkeypatch.setattr(T, "record_anchor", spy_record)
    monkeypatch.setattr(FrameAnchor, "exchange", spy_exchange)
    latents = torch.randn(1, 4, 10, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 5, tiny_video_model.network.config.cross_attention_dim)
    windows = ContextWindows(length=4, overlap=1, fuse="flat")
    spans = windows.spans(10)
    steps = len(spans)  # one cycle: every window once
    config = T.TuneConfig(steps=steps, learning_rate=1e-4, seed=3, windows=windows, trainable=("attn1.to_q",))
    _, losses = T.tune(tiny_video_model, latents, context, config)
    assert len(recorded) == steps - 1  # every window but the one holding frame 0
    assert all(torch.equal(r, latents[:, :, :4]) for r in recorded)  # the clip's first window, un-noised
    assert read and all(read)  # later windows' attention got frame 0's recorded keys, not their own first frame's
    assert all(torch.isfinite(torch.tensor(losses)))
