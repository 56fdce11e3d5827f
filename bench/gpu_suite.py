"""Every bench's GPU configuration in one run, one markdown table (random full-size weights built on the device).

Phases (few steps each, timed, then projected to the method's full schedule; peak memory per phase):
Tune-A-Video tune / invert / sample at 24 frames 512x512; Video-P2P null-text inversion + controlled edit steps at
8 frames; Tune-A-Video tune / invert / sample on a 192-frame 512x512 clip through 16-frame context windows
(issue 18); MotionDirector spatial+temporal LoRA steps at 16 frames 512x512 on the AnimateDiff v2 base; Dreamix mixed
finetuning (dreamix-attention) at 8 frames; CLIP ViT-L/14 scoring of 24 frames. Planned to finish in well under
9 minutes on one H100 (the slowest phase is a few 24-frame tuning steps).

    bash bench/gpu_suite.sh                   # CUDA, SD1.5 size, writes bench/gpu_suite.md
    bash bench/gpu_suite.sh --smoke           # the same code paths on CPU with tiny sizes (tests run this)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
from common import CONFIGS, build_video_model, describe, peak_memory_gib, reset_peak, sync
from tunevideo.tiny import TINY_UNET_CONFIG

CONFIGS.setdefault("tiny", TINY_UNET_CONFIG)  # the tests' tiny model: --smoke must stay well under a minute


@dataclass(frozen=True)
class Sizes:
    unet: str
    frames: int  # Tune-A-Video / MotionDirector clip
    short: int  # Video-P2P / Dreamix clip
    pixels: int
    steps: int  # timed steps per phase
    clip_frames: int
    inner: int  # null-text inner steps
    long: int  # long clip (issue 18), tuned, inverted and sampled through context windows
    window: int  # its context_length (overlap: a quarter of it)


FULL = Sizes("sd15", 24, 8, 512, 3, 24, 10, 192, 16)
SMOKE = Sizes("tiny", 2, 2, 32, 1, 2, 1, 6, 4)


def _timed(fn, device: str) -> tuple[float, float]:
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, peak_memory_gib(device)


def run(s: Sizes, device: str) -> list[tuple[str, str, float, float, float]]:
    """Rows ``(phase, shape, seconds per step, projected seconds of the full schedule, peak GiB)``."""
    from tunevideo.modules.methods.dreamix import DREAMIX_PRESETS, DreamixConfig, dreamix_finetune
    from tunevideo.modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS, tune_a_video
    from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, null_text_invert
    from tunevideo.modules.sampling.ddim import ddim_invert, sample
    from tunevideo.modules.training.tune import TuneConfig

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model, ctx_dim = build_video_model(s.unet, device, dtype)
    h = s.pixels // 8
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 4, s.frames, h, h, generator=g, device=device)
    xs = x[:, :, :s.short]
    c, u = (torch.randn(1, 77, ctx_dim, generator=g, device=device) for _ in range(2))
    rows = []

    def add(name, shape, fn, steps, full_steps):
        sec, peak = _timed(fn, device)
        rows.append((name, shape, sec / steps, sec / steps * full_steps, peak))

    n = s.steps
    clip = f"{s.frames}x{s.pixels}²"
    short = f"{s.short}x{s.pixels}²"
    cfg = TuneConfig(steps=n, trainable=TUNE_A_VIDEO_PRESETS["tune-a-video"], gradient_checkpointing=True)
    tuned = {}
    add("Tune-A-Video tune (tune-a-video)", clip,
        lambda: tuned.update(m=tune_a_video(model, x, c, cfg, device=device)[0]), n, 500)
    fn = tuned["m"].model_fn(device)
    add("Tune-A-Video invert", clip, lambda: ddim_invert(fn, model.schedule, x, u, steps=n), n, 50)
    add("Tune-A-Video sample (cfg)", clip, lambda: sample(fn, model.schedule, x, c, u, steps=n, cfg=12.5), n, 50)
    p2p = model.network.with_attention("video-p2p")
    p2p_fn = model.replace(network=p2p).model_fn(device)
    nt = NullTextConfig(steps=n, inner_steps=s.inner, early_stop_epsilon=-1.0)
    add("Video-P2P null-text inversion", short, lambda: null_text_invert(p2p_fn, model.schedule, xs, c, u, nt), n, 50)
    dx = DreamixConfig(steps=2 * n, trainable=DREAMIX_PRESETS["dreamix-attention"], image_ratio=0.5,
                       gradient_checkpointing=True)
    add("Dreamix finetune (dreamix-attention, mixed)", short,
        lambda: dreamix_finetune(model, xs, c, dx, device=device), 2 * n, 300)
    rows += _long_clip(s, device, model, c, u)
    rows += _motion_director(s, device, dtype, ctx_dim)
    rows += _clip(s, device)
    return rows


def _long_clip(s: Sizes, device: str, model, c, u):
    """Tune-A-Video on a long clip through context windows (bench/long_clips.py sweeps the clip length)."""
    from tunevideo.modules.methods.tune_a_video import tune_a_video
    from tunevideo.modules.sampling.ddim import ddim_invert, sample
    from tunevideo.modules.sampling.windows import ContextWindows
    from tunevideo.modules.training.tune import TuneConfig

    windows = ContextWindows(length=s.window, overlap=s.window // 4)
    g = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(1, 4, s.long, s.pixels // 8, s.pixels // 8, generator=g, device=device)
    n, shape, tag = s.steps, f"{s.long}x{s.pixels}²", f"window {s.window}"
    cfg = TuneConfig(steps=n, gradient_checkpointing=True, windows=windows)
    rows = []
    for name, fn, full in (
            (f"Long clip tune ({tag})", lambda: tune_a_video(model, x, c, cfg, device=device), 500),
            (f"Long clip invert ({tag})", lambda: ddim_invert(model.model_fn(device, windows=windows),
                                                              model.schedule, x, u, steps=n), 50),
            (f"Long clip sample ({tag}, cfg)", lambda: sample(model.model_fn(device, windows=windows),
                                                              model.schedule, x, c, u, steps=n, cfg=12.5), 50)):
        sec, peak = _timed(fn, device)
        rows.append((name, shape, sec / n, sec / n * full, peak))
    return rows


def _motion_director(s: Sizes, device: str, dtype, ctx_dim: int):
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.build import video_model_with_motion
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config, unet_to_ldm
    from tunevideo.modules.methods.motion_director import MotionDirectorConfig, train
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.tiny import tiny_motion_module

    cfg = CONFIGS[s.unet]
    with torch.device(device):
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)).to(dtype)
        motion = {k: v.to(dtype) for k, v in tiny_motion_module("v2", unet_config=cfg).items()}
    model = video_model_with_motion(unet_to_ldm(unet), cfg, NoiseSchedule.scaled_linear(), motion, "mm_sd_v15_v2")
    frames = 16 if s is FULL else s.frames
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 4, frames, s.pixels // 8, s.pixels // 8, generator=g, device=device)
    c = torch.randn(1, 77, ctx_dim, generator=g, device=device)
    config = MotionDirectorConfig(steps=s.steps)
    sec, peak = _timed(lambda: train(model, [x], [c], config, device=device), device)
    return [("MotionDirector spatial+temporal LoRA", f"{frames}x{s.pixels}²", sec / s.steps, sec / s.steps * 300,
             peak)]


def _clip(s: Sizes, device: str):
    from clip_score import build
    from tunevideo.modules.evaluation.clip_score import score_video

    clip = build(device) if s is FULL else _tiny_clip(device)
    frames = torch.rand(s.clip_frames, s.pixels, s.pixels, 3, generator=torch.Generator().manual_seed(0))
    sec, peak = _timed(lambda: score_video(clip, frames, "a bear is skiing", device=device), device)
    return [("CLIP scoring (frame consistency + text)", f"{s.clip_frames}x{s.pixels}²", sec, sec, peak)]


def _tiny_clip(device: str):
    import clip_score

    small = {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "vocab_size": 49408, "max_position_embeddings": 77},
             "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "image_size": 224, "patch_size": 32},
             "projection_dim": 16}
    full, clip_score.VIT_L14 = clip_score.VIT_L14, small
    try:
        return clip_score.build(device)
    finally:
        clip_score.VIT_L14 = full


def table(rows, device: str) -> str:
    out = [f"GPU suite on {describe(device)}, torch {torch.__version__} (random weights; projected = per-step time x "
           f"the method's default steps)", "",
           "| phase | clip | s/step | projected s | peak GiB |", "|---|---|---|---|---|"]
    out += [f"| {p} | {shape} | {sec:.3f} | {proj:.1f} | {peak:.2f} |" for p, shape, sec, proj, peak in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code paths")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    a = ap.parse_args(argv)
    device = "cpu" if a.smoke else "cuda"
    if not a.smoke and not torch.cuda.is_available():
        sys.stderr.write("gpu_suite: no CUDA device; use --smoke for the CPU code-path check\n")
        return 2
    text = table(run(SMOKE if a.smoke else FULL, device), device)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
