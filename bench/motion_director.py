"""MotionDirector on AnimateDiff: one training step of each path (forward + backward + AdamW on its LoRA).

Prints s/step, FLOPs/step, achieved TFLOP/s and peak memory for the spatial path (one frame) and the temporal path
(the whole clip, spatial LoRA on, debiased loss), and the projected time of a whole training run.

    python bench/motion_director.py                          # CPU, small config, 8 frames 128x128
    python bench/motion_director.py --device cuda --size sd15 --frames 16 --height 512 --width 512
    python bench/motion_director.py --flops-only --size sd15 --frames 16 --height 512 --width 512   # no GPU needed

--flops-only counts FLOPs on the meta device (no memory, no compute) for the issue's budget: 300 steps at 16 frames
512x512 on one H100 in <= 40 s (anchor: ~10 min and 13.5 GB on a 3090 for AnimateDiff-MotionDirector), and states the
TFLOP/s and H100 utilisation that needs. A step runs the spatial path with probability 0.8 (MotionDirector skips it
on 20% of steps), so an average step is 0.8 spatial + 1 temporal.
"""

from __future__ import annotations

import contextlib

import torch
from common import CONFIGS, bench_parser, count_flops, describe, peak_memory_gib, reset_peak, timed
from tunevideo import tiny
from tunevideo.modules.convert.unet import diffusers_config_from_unet_config
from tunevideo.modules.methods.motion_director import MotionDirectorConfig, debiased_loss
from tunevideo.modules.networks.animatediff import build_motion_unet
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.modules.training import lora as L
from tunevideo.modules.training.tune import autocast_dtype

H100_BF16_DENSE = 989e12  # NVIDIA H100 SXM, dense bf16 tensor-core peak
STEPS, BUDGET_S = 300, 40


def build(size: str, device: str, dtype: torch.dtype, rank: int):
    """AnimateDiff UNet (random SD1.5-layout weights + a random v2 motion module) with spatial + temporal LoRAs."""
    from diffusers import UNet2DConditionModel

    cfg = CONFIGS[size]
    torch.manual_seed(0)
    with torch.device(device):
        unet2d = UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)).to(dtype).eval()
    motion = tiny.tiny_motion_module("v2", unet_config=cfg)
    if device == "meta":
        motion = {k: v.to("meta") for k, v in motion.items()}
    unet = build_motion_unet(unet2d, motion).clone(device=None if device == "meta" else device)
    L.add_adapter(unet, "spatial_0", L.SPATIAL_TARGETS, rank, 0.1)
    L.add_adapter(unet, "temporal", L.TEMPORAL_TARGETS["animatediff"], rank, 0.1)
    return unet, cfg["context_dim"]


def steps(unet, x0, ctx, amp, gc: bool):
    schedule = NoiseSchedule.scaled_linear()
    dev = x0.device
    if gc:
        unet.enable_gradient_checkpointing()
    unet.train()
    opt_s = torch.optim.AdamW(L.adapter_parameters(unet, "spatial_0"), lr=5e-4)
    opt_t = torch.optim.AdamW(L.adapter_parameters(unet, "temporal"), lr=5e-4)
    t = torch.tensor([500], device=dev)
    noise = torch.randn_like(x0)
    x_t = schedule.add_noise(x0, noise, t) if dev.type != "meta" else x0

    def run(x, running, training, opt, debias):
        L.activate(unet, running, training)
        autocast = torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with autocast:
            pred = unet(x.to(unet.dtype), t, ctx.to(unet.dtype)).float()
        target = noise[:, :, : x.shape[2]]
        loss = torch.nn.functional.mse_loss(pred, target)
        if debias:
            loss = loss + debiased_loss(pred, target, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dev.type != "meta":
            opt.step()

    def spatial():
        run(x_t[:, :, :1], ["spatial_0"], ["spatial_0"], opt_s, False)

    def temporal():
        run(x_t, ["spatial_0", "temporal"], ["temporal"], opt_t, True)

    return spatial, temporal


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--rank", type=int, default=MotionDirectorConfig().rank)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device and project")
    a = ap.parse_args()
    gc = not a.no_checkpointing
    if a.flops_only:
        unet, ctx_dim = build(a.size, "meta", torch.float32, a.rank)
        x0 = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8, device="meta")
        spatial, temporal = steps(unet, x0, torch.randn(1, 77, ctx_dim, device="meta"), None, False)
        fs, ft = count_flops(spatial), count_flops(temporal)
        fwd_t = count_flops(lambda: unet(x0, torch.tensor([1]), torch.randn(1, 77, ctx_dim, device="meta")))
        if gc:  # checkpointing recomputes each forward once in backward
            fs, ft = fs + fwd_t / a.frames, ft + fwd_t
        per_step = 0.8 * fs + ft
        need = STEPS * per_step / BUDGET_S
        print(f"model {a.size} + v2 motion module, clip f={a.frames} {a.height}x{a.width}, rank {a.rank}, "
              f"checkpointing {gc}")
        print(f"  spatial step {fs / 1e12:.2f} TFLOP; temporal step {ft / 1e12:.2f} TFLOP; average step "
              f"{per_step / 1e12:.2f} TFLOP; {STEPS} steps {STEPS * per_step / 1e15:.2f} PFLOP")
        print(f"  {STEPS} steps in {BUDGET_S} s needs {need / 1e12:.0f} TFLOP/s = {need / H100_BF16_DENSE:.0%} of "
              f"H100 dense bf16 peak")
        return
    dev = torch.device(a.device)
    amp = autocast_dtype(a.precision, dev)
    unet, ctx_dim = build(a.size, a.device, amp or torch.float32, a.rank)
    x0 = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8, device=dev)
    ctx = torch.randn(1, 77, ctx_dim, device=dev)
    print(f"device: {describe(a.device)}  torch {torch.__version__}")
    print(f"model: {a.size} + v2 motion module, clip f={a.frames} {a.height}x{a.width}, autocast {amp}, "
          f"checkpointing {gc}, rank {a.rank}")
    spatial, temporal = steps(unet, x0, ctx, amp, gc)
    results = {}
    for name, fn in (("spatial", spatial), ("temporal", temporal)):
        flops = count_flops(fn)
        reset_peak(a.device)
        sec = timed(fn, a.device, a.repeats)
        results[name] = sec
        print(f"  {name:>8}: {sec:.3f} s/step  {flops / 1e12:.3f} TFLOP/step  {flops / sec / 1e12:.3f} TFLOP/s  "
              f"peak {peak_memory_gib(a.device):.2f} GiB")
    avg = 0.8 * results["spatial"] + results["temporal"]
    print(f"projected: {STEPS} steps {STEPS * avg:.1f} s (0.8 spatial + 1 temporal per step)")


if __name__ == "__main__":
    main()
