"""Long clips through context windows (issue 18): peak memory and time per step of tuning, DDIM inversion and guided
sampling at 16, 48, 96 and 192 frames, every step bounded by one window of 16 frames.

- tuning step: :func:`~tunevideo.modules.training.tune.tune` with ``TuneConfig.windows``: one window per step
  (forward + backward + AdamW), so its time and memory should not grow with the clip;
- inversion step: one step of :func:`~tunevideo.modules.sampling.ddim.ddim_invert` through
  :func:`~tunevideo.modules.sampling.windows.windowed` (``VideoUNet.model_fn(windows=...)``: every window once,
  predictions fused, frame 0 the anchor of every window);
- sampling step: one step of :func:`~tunevideo.modules.sampling.ddim.sample` with guidance (cond + uncond) through
  the same wrapper: time linear in the number of windows, memory of one window.

Peak memory: CUDA ``max_memory_allocated``; CPU: the process's peak resident set (``VmHWM``, reset before each
measurement through ``/proc/self/clear_refs``), printed as the absolute peak and as the growth above the resident
set before the step ("working"). FLOPs per step are counted with ``torch.utils.flop_counter`` on the meta device
(one window's forward / forward+backward times the windows a step runs), so no compute is spent on them.

The projection counts the FLOPs of the same steps on the real SD1.5 UNet at 192 frames 512x512 with the same
window and turns them into H100 seconds at its dense bf16 peak and at an assumed utilisation (``--mfu``), with the
pack's memory estimate of the tuning step (:func:`~tunevideo.modules.training.memory.tune_estimate`).

    python bench/long_clips.py                          # CPU, small config, 64x64, window 16 (overlap 4)
    python bench/long_clips.py --device cuda --size sd15 --height 512 --width 512
    python bench/long_clips.py --smoke                  # tiny model, 8/16/24 frames, window 8: the code paths only
"""

from __future__ import annotations

import ctypes
import gc
import time
from functools import partial

import torch
from common import CONFIGS, bench_parser, build_video_model, count_flops, describe, sync
from tunevideo.modules.sampling.ddim import ddim_invert, sample
from tunevideo.modules.sampling.windows import ContextWindows
from tunevideo.modules.training.tune import TuneConfig, tune
from tunevideo.tiny import TINY_UNET_CONFIG

CONFIGS.setdefault("tiny", TINY_UNET_CONFIG)
H100_BF16_DENSE = 989e12  # NVIDIA H100 SXM, dense bf16 tensor-core peak
GIB = 2**30


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _reset_cpu_peak() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``), so the resident set is what is live, then reset its
    peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def measured(fn, device: str) -> tuple[float, float, float]:
    """``(seconds, peak GiB, working GiB)`` of one call of ``fn``."""
    sync(device)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_cpu_peak()
        base = _status("VmRSS")
    t0 = time.perf_counter()
    fn()
    sync(device)
    sec = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status("VmHWM")
    return sec, peak / GIB, (peak - base) / GIB


def window_flops(size: str, frames: int, height: int, width: int, checkpointing: bool = True) -> tuple[int, int]:
    """FLOPs of one forward and of one tuning step (forward + backward, + the recomputed forward with gradient
    checkpointing) of the Tune-A-Video preset on a clip of ``frames`` frames, counted on the meta device."""
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.modules.training.trainable import select_trainable

    cfg = CONFIGS[size]
    with torch.device("meta"):
        unet = inflate_unet(UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)))
        x = torch.randn(1, 4, frames, height // 8, width // 8)
        ctx = torch.randn(1, 77, cfg["context_dim"])
        t = torch.tensor([500])
    trainable = set(select_trainable(unet, TuneConfig().trainable))
    for name, p in unet.named_parameters():
        p.requires_grad_(name in trainable)

    def fwd():
        with torch.no_grad():
            unet(x, t, ctx)

    f = count_flops(fwd)
    fb = count_flops(lambda: unet(x, t, ctx).float().pow(2).mean().backward())
    return f, fb + (f if checkpointing else 0)


def run(a) -> list[dict]:
    dev = torch.device(a.device)
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    model, ctx_dim = build_video_model(a.size, a.device, dtype)
    windows = ContextWindows(length=a.window, overlap=a.overlap, fuse="pyramid")
    g = torch.Generator(device=dev).manual_seed(0)
    c, u = (torch.randn(1, 77, ctx_dim, generator=g, device=dev) for _ in range(2))
    fwd, step = window_flops(a.size, a.window, a.height, a.width)
    fn = model.model_fn(dev, windows=windows)  # windowed(): window by window, fused, frame 0 as every window's anchor
    config = TuneConfig(steps=a.repeats + 1, windows=windows, gradient_checkpointing=True, learning_rate=1e-5)
    rows = []
    for n, frames in enumerate([a.frames_list[0]] + a.frames_list):  # the first pass only warms up
        x = torch.randn(1, 4, frames, a.height // 8, a.width // 8, generator=g, device=dev)
        k = len(windows.spans(frames))
        phases = []
        for name, run_phase, flops in (
                ("tune", partial(tune, model, x, c, config, device=dev), step),
                ("invert", partial(ddim_invert, fn, model.schedule, x, u, steps=a.repeats), k * fwd),
                ("sample", partial(sample, fn, model.schedule, x, c, u, steps=a.repeats, cfg=12.5), 2 * k * fwd)):
            ends = [time.perf_counter()]
            sec, peak, work = measured(partial(run_phase, callback=lambda *_, e=ends: e.append(time.perf_counter())),
                                       a.device)
            gaps = sorted(b - e for e, b in zip(ends[:-1], ends[1:], strict=True))
            if name == "tune":  # its first step also holds the set-up (clone, optimiser): not timed
                gaps = sorted(b - e for e, b in zip(ends[1:-1], ends[2:], strict=True))
            phases.append((name, gaps[len(gaps) // 2], peak, work, flops))  # median step: robust to a busy machine
        if n == 0:
            continue
        for name, sec, peak, work, flops in phases:
            rows.append({"phase": name, "frames": frames, "windows": 1 if name == "tune" else k, "sec": sec,
                         "peak": peak, "work": work, "flops": flops})
            print(f"  {name:>6} f={frames:>4} windows/step {rows[-1]['windows']:>3}: {sec:8.3f} s/step "
                  f"{flops / 1e12:8.4f} TFLOP/step {flops / sec / 1e12:7.3f} TFLOP/s  peak {peak:6.2f} GiB "
                  f"(working {work * 1024:8.1f} MiB)", flush=True)
    return rows


def verdicts(rows: list[dict], frames_list: list[int]) -> None:
    """Memory flat within 10% from the second clip length on (the issue's 48 frames); time per step linear in the
    frames for inversion/sampling (per window: flat) and flat for tuning."""
    for name in ("tune", "invert", "sample"):
        mine = [r for r in rows if r["phase"] == name]
        later = [r["peak"] for r in mine if r["frames"] >= frames_list[1]]
        spread = (max(later) - min(later)) / min(later)
        per_frame = [r["sec"] / r["frames"] for r in mine]
        per_window = [r["sec"] / r["windows"] for r in mine]
        print(f"  {name:>6}: peak spread {spread:.1%} from f={frames_list[1]} on "
              f"({'flat' if spread <= 0.10 else 'NOT flat'} within 10%); s per window "
              + " ".join(f"{v:.3f}" for v in per_window) + "; ms per frame " + " ".join(f"{1e3 * v:.1f}"
                                                                                   for v in per_frame))


def projection(a) -> None:
    """FLOP-based H100 projection of the three steps at ``--project-frames`` frames 512x512, SD1.5, same window."""
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.modules.training.memory import tune_estimate

    frames, px = a.project_frames, 512
    windows = ContextWindows(length=a.window, overlap=a.overlap)
    k = len(windows.spans(frames))
    fwd, step = window_flops("sd15", a.window, px, px)
    with torch.device("meta"):
        net = inflate_unet(UNet2DConditionModel(**diffusers_config_from_unet_config(CONFIGS["sd15"])))
    est = tune_estimate(net, (1, 4, frames, px // 8, px // 8),
                        TuneConfig(windows=windows, gradient_checkpointing=True, mixed_precision="bf16"), "cuda")
    print(f"projection: SD1.5, {frames} frames {px}x{px}, window {a.window} overlap {a.overlap} ({k} windows), one "
          f"H100 (dense bf16 peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s; at {a.mfu:.0%} utilisation, assumed)")
    for name, flops, count in (("tune step (one window)", step, 500), ("inversion step", k * fwd, 50),
                               ("sampling step (cfg)", 2 * k * fwd, 50)):
        best, likely = flops / H100_BF16_DENSE, flops / (H100_BF16_DENSE * a.mfu)
        print(f"  {name:<24} {flops / 1e12:8.2f} TFLOP: >= {best:6.3f} s at peak, ~{likely:6.3f} s at "
              f"{a.mfu:.0%}; x{count}: ~{count * likely:6.1f} s")
    print(f"  tuning memory (pack estimate, bf16 autocast, checkpointing): {est.describe()}")


def main() -> None:
    ap = bench_parser(__doc__)
    ap.set_defaults(height=64, width=64)
    ap.add_argument("--frames-list", default="16,48,96,192", help="clip lengths, comma separated")
    ap.add_argument("--window", type=int, default=16, help="context_length")
    ap.add_argument("--overlap", type=int, default=4, help="context_overlap")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per phase and clip length (median)")
    ap.add_argument("--project-frames", type=int, default=192)
    ap.add_argument("--mfu", type=float, default=0.4, help="utilisation assumed for the H100 projection")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 8/16/24 frames, window 8 overlap 2")
    ap.add_argument("--no-projection", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.size, a.frames_list, a.window, a.overlap, a.height, a.width = "tiny", "8,16,24", 8, 2, 64, 64
    a.frames_list = [int(v) for v in str(a.frames_list).split(",")]
    print(f"device: {describe(a.device)}  torch {torch.__version__}")
    print(f"model: {a.size}, {a.height}x{a.width}, window {a.window} overlap {a.overlap} (pyramid), clips "
          f"{a.frames_list} frames, {a.repeats} timed step(s) per phase")
    t0 = time.perf_counter()
    rows = run(a)
    verdicts(rows, a.frames_list)
    if not a.no_projection:
        projection(a)
    print(f"bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
