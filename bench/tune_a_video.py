"""Tune-A-Video phases: tuning step (forward + backward + AdamW), inversion step, guided sampling step.

Prints s/step, FLOPs/step, achieved TFLOP/s and peak memory per phase, and the projected time of the paper's
schedule (500 tuning steps, 50 inversion + 50 sampling steps).

    python bench/tune_a_video.py                       # CPU, small config, 8 frames 128x128
    python bench/tune_a_video.py --device cuda --size sd15 --frames 24 --height 512 --width 512
    python bench/tune_a_video.py --flops-only --size sd15 --frames 24 --height 512 --width 512   # no GPU needed

--flops-only counts FLOPs on the meta device (no memory, no compute) and states what the issue's H100 targets
(500 tuning steps <= 80 s; 50 inversion + 50 guided sampling steps <= 9 s) demand in TFLOP/s and utilisation.
"""

from __future__ import annotations

import torch
from common import bench_parser, build_video_model, count_flops, describe, peak_memory_gib, reset_peak, timed
from tunevideo.modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS as PRESETS
from tunevideo.modules.networks.inflate import inflate_unet
from tunevideo.modules.sampling.guidance import guided_output
from tunevideo.modules.training.trainable import select_trainable
from tunevideo.modules.training.tune import TuneConfig, autocast_dtype, denoising_loss, prepare_unet

H100_BF16_DENSE = 989e12  # NVIDIA H100 SXM, dense bf16 tensor-core peak


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="tuning autocast (auto: bf16 on CUDA, fp32 on CPU); inference runs in the weights' dtype")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--trainable", choices=list(PRESETS), default="tune-a-video",
                    help="trainable preset (tune-a-video-reference: mid + up blocks, no backward through down blocks)")
    ap.add_argument("--tune-only", action="store_true", help="measure the tuning step only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device and project")
    a = ap.parse_args()
    if a.flops_only:
        return flops_only(a)
    dev = torch.device(a.device)
    amp = autocast_dtype(a.precision, dev)
    weights = amp or torch.float32  # frozen weights stored in the autocast dtype on GPU, like a ComfyUI fp16 model
    model, ctx_dim = build_video_model(a.size, a.device, weights)
    x0 = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8, device=dev)
    ctx = torch.randn(1, 77, ctx_dim, device=dev)
    print(f"device: {describe(a.device)}  torch {torch.__version__}")
    print(f"model: {a.size}, clip f={a.frames} {a.height}x{a.width}, tuning autocast {amp}, "
          f"checkpointing {not a.no_checkpointing}, trainable preset {a.trainable}")

    cfg = TuneConfig()
    names = select_trainable(model.network, PRESETS[a.trainable])
    results = {}
    with torch.enable_grad():
        unet, params = prepare_unet(model, names, dev, amp)
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
        if not a.no_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        gen = torch.Generator(device=dev).manual_seed(0)

        def tune_step():
            noise = torch.randn(x0.shape, generator=gen, device=dev)
            t = torch.randint(0, 1000, (1,), generator=gen, device=dev)
            loss = denoising_loss(unet, model.schedule, x0, ctx, t, noise, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        results["tune"] = _measure("tune", tune_step, a)
        print(f"  trainable: {sum(p.numel() for p in params) / 1e6:.1f}M values in {len(params)} tensors")
    if a.tune_only:
        print(f"projected: 500 tuning steps {500 * results['tune'][0]:.1f} s")
        return
    unet.eval()
    fn = model.model_fn(dev)
    uncond = torch.zeros_like(ctx)
    with torch.no_grad():
        results["invert"] = _measure("invert", lambda: fn(x0, torch.tensor([500], device=dev), uncond), a)
        results["sample"] = _measure("sample", lambda: guided_output(fn, x0, 500, ctx, uncond, 12.5), a)
    total_tune = 500 * results["tune"][0]
    total_inf = 50 * (results["invert"][0] + results["sample"][0])
    print(f"projected: 500 tuning steps {total_tune:.1f} s; 50 inversion + 50 guided sampling steps "
          f"{total_inf:.1f} s")


def flops_only(a) -> None:
    from common import CONFIGS
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config

    cfg = CONFIGS[a.size]
    with torch.device("meta"):
        unet = inflate_unet(UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)))
        x = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8)
        ctx = torch.randn(1, 77, cfg["context_dim"])
        t = torch.tensor([500])
    trainable = set(select_trainable(unet, PRESETS[a.trainable]))
    for name, p in unet.named_parameters():
        p.requires_grad_(name in trainable)

    def fwd():
        with torch.no_grad():
            unet(x, t, ctx)

    def fwd_bwd():
        unet(x, t, ctx).float().pow(2).mean().backward()

    f, fb = count_flops(fwd), count_flops(fwd_bwd)
    tune = fb + (0 if a.no_checkpointing else f)  # checkpointing recomputes the forward once in backward
    inference = 50 * (f + 2 * f)  # inversion b=1, guided sampling b=2
    print(f"model {a.size}, clip f={a.frames} {a.height}x{a.width}, checkpointing {not a.no_checkpointing}, "
          f"trainable preset {a.trainable}")
    print(f"  forward {f / 1e12:.2f} TFLOP; tuning step {tune / 1e12:.2f} TFLOP; "
          f"50 inversion + 50 guided sampling steps {inference / 1e12:.0f} TFLOP")
    for label, total, seconds in (("500 tuning steps", 500 * tune, 80), ("inversion + sampling", inference, 9)):
        need = total / seconds
        print(f"  {label} in {seconds} s needs {need / 1e12:.0f} TFLOP/s = {need / H100_BF16_DENSE:.0%} of H100 "
              f"dense bf16 peak")


def _measure(name, step, a):
    flops = count_flops(step)
    reset_peak(a.device)
    sec = timed(step, a.device, a.repeats)
    print(f"  {name:>6}: {sec:.3f} s/step  {flops / 1e12:.3f} TFLOP/step  {flops / sec / 1e12:.3f} TFLOP/s  "
          f"peak {peak_memory_gib(a.device):.2f} GiB")
    return sec, flops


if __name__ == "__main__":
    main()
