"""Dreamix and EI² figures.

    python bench/dreamix_ei2.py shift                 # EI² claim: covariate shift of TAV temporal attention vs STAM
    python bench/dreamix_ei2.py ffam                  # FFAM vs sparse-causal: FLOPs and time per UNet forward
    python bench/dreamix_ei2.py mixed                 # Dreamix: per-step FLOPs/time of video vs frame batches
    python bench/dreamix_ei2.py budget                # FLOP accounting of the shipped defaults on one H100
    python bench/dreamix_ei2.py ffam --device cuda --size sd15 --frames 8 --height 512 --width 512

``shift`` tunes the pack's tiny model twice from the same base and seed, once with Tune-A-Video's temporal layer and
once with STAM, and reports how far the features entering each next module (every transformer block's output)
moved in mean and variance, on held-out noisy inputs (EI² Sec. 3's covariate shift). ``budget`` counts FLOPs on the
meta device (no compute) and divides by the H100's dense bf16 peak at an assumed utilisation.
"""

from __future__ import annotations

import sys

import torch
from common import bench_parser, build_video_model, count_flops, describe, peak_memory_gib, reset_peak, sync, timed

H100_BF16_DENSE = 989e12
ASSUMED_MFU = 0.35  # an assumed H100 utilisation for UNet training/inference; never measured here (no GPU lent)


def _rate(flops: int, sec: float, device: str) -> str:
    return f"  {sec * 1e3:9.1f} ms  {flops / sec / 1e12:7.2f} TFLOP/s  peak {peak_memory_gib(device):.2f} GiB"


def shift(a) -> None:
    from tunevideo.modules.methods.ei2 import covariate_shift
    from tunevideo.modules.methods.tune_a_video import tune_a_video
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.training.tune import TuneConfig
    from tunevideo.modules.video_unet import VideoUNet
    from tunevideo.tiny import TINY_UNET_CONFIG, tiny_unet2d

    unet2d = tiny_unet2d(seed=0)
    g = torch.Generator().manual_seed(0)
    f, s = a.frames, a.height // 8
    # A clip with temporal structure: one random image drifting sideways plus per-frame noise.
    base = torch.randn(1, 4, 1, s, s + f, generator=g)
    clip = torch.cat([base[..., i:i + s] for i in range(f)], dim=2) + 0.1 * torch.randn(1, 4, f, s, s, generator=g)
    ctx = torch.randn(1, 7, TINY_UNET_CONFIG["context_dim"], generator=g)
    probe_x = torch.randn(2, 4, f, s, s, generator=g)
    probe_t = torch.tensor([200, 700])
    probe_c = ctx.expand(2, -1, -1)
    print(f"covariate shift, tiny model, {f} frames {s}x{s} latents, {a.steps} steps lr {a.lr}, seed 0, "
          f"{describe('cpu')}")
    print(f"{'temporal layer':<14} {'trainable':<22} {'final loss':>10} {'|d mean|':>9} {'max':>9} "
          f"{'|d var|/var':>11} {'max':>9}")
    for trainable in (("attn_temp",), ("attn1.to_q", "attn2.to_q", "attn_temp")):
        for temporal in ("tune-a-video", "ei2-stam"):
            model = VideoUNet(inflate_unet(unet2d, temporal=temporal), NoiseSchedule.scaled_linear())
            config = TuneConfig(steps=a.steps, learning_rate=a.lr, seed=0, trainable=trainable,
                                gradient_checkpointing=False)
            tuned, curve = tune_a_video(model, clip, ctx, config)
            r = covariate_shift(model.network, tuned.network, probe_x, probe_t, probe_c)
            print(f"{temporal:<14} {'+'.join(trainable):<22} {sum(curve[-10:]) / 10:>10.4f} "
                  f"{r['mean_shift']:>9.5f} {r['mean_shift_max']:>9.5f} {r['var_shift']:>11.5f} "
                  f"{r['var_shift_max']:>9.5f}")


def _variants(model, pool):
    unet = model.network
    return {"sparse-causal (TAV)": unet, f"fine-coarse p={pool} (EI²)": unet.with_attention("ei2-ffam",
                                                                                             {"pool_size": pool}),
            "fine-coarse + STAM": unet.with_attention("ei2-ffam", {"pool_size": pool}).with_temporal("ei2-stam")}


def ffam(a) -> None:
    dev = "meta" if a.flops_only else a.device
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model, ctx_dim = build_video_model(a.size, dev, dtype)
    with torch.device(dev):
        x = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8, dtype=dtype)
        c = torch.randn(1, 77, ctx_dim, dtype=dtype)
        t = torch.tensor([500])
    print(f"UNet forward, {a.size}, {a.frames} frames {a.height}x{a.width}, {describe(a.device)}")
    for name, unet in _variants(model, a.pool).items():
        def fwd(unet=unet):
            with torch.no_grad():
                unet(x, t, c)
        flops = count_flops(fwd)
        line = f"{name:<26} {flops / 1e12:8.3f} TFLOP/forward"
        if not a.flops_only:
            reset_peak(a.device)
            sec = timed(fwd, a.device, a.repeats)
            line += _rate(flops, sec, a.device)
        print(line)


def mixed(a) -> None:
    from tunevideo.modules.methods.dreamix import as_image_batch
    from tunevideo.modules.training.tune import denoising_loss

    dev = "meta" if a.flops_only else a.device
    model, ctx_dim = build_video_model(a.size, dev, torch.float32)
    unet = model.network.clone()
    for p in unet.parameters():
        p.requires_grad_(True)  # the paper's preset: the whole video model
    amp = torch.bfloat16 if a.device.startswith("cuda") else None
    with torch.device(dev):
        x0 = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8)
        c = torch.randn(1, 77, ctx_dim)
        noise = torch.randn_like(x0)

    def step(temporal: bool):
        xs, cs, ns = (x0, c, noise) if temporal else (*as_image_batch(x0, c), as_image_batch(noise, c)[0])
        t = torch.full((xs.shape[0],), 500, device=xs.device)
        denoising_loss(unet, model.schedule, xs, cs, t, ns, amp, temporal=temporal).backward()

    print(f"Dreamix finetuning step (whole model), {a.size}, {a.frames} frames {a.height}x{a.width}, "
          f"{describe(a.device)}")
    for name, temporal in (("video batch", True), ("frame batch (temporal bypassed)", False)):
        flops = count_flops(lambda temporal=temporal: step(temporal))
        line = f"{name:<32} {flops / 1e12:8.3f} TFLOP/step"
        if not a.flops_only:
            reset_peak(a.device)
            sec = timed(lambda temporal=temporal: step(temporal), a.device, a.repeats)
            line += _rate(flops, sec, a.device)
        print(line)
    sync(a.device)


def budget(a) -> None:
    """FLOPs of the shipped workflows' defaults (sd15, 512x512) -> seconds on one H100 at ASSUMED_MFU."""
    from tunevideo.modules.defaults import DREAMIX, EI2
    from tunevideo.modules.methods.dreamix import as_image_batch
    from tunevideo.modules.training.tune import denoising_loss

    model, ctx_dim = build_video_model("sd15", "meta", torch.float32)
    rate = H100_BF16_DENSE * ASSUMED_MFU

    def per_step(unet, frames, train, temporal=True, trainable_all=False):
        u = unet.clone()
        for n, p in u.named_parameters():
            p.requires_grad_(trainable_all or "attn_temp" in n or n.endswith("to_q.weight"))
        with torch.device("meta"):
            x0 = torch.randn(1, 4, frames, 64, 64)
            c = torch.randn(1, 77, ctx_dim)

        def run():
            xs, cs = (x0, c) if temporal else as_image_batch(x0, c)
            t = torch.full((xs.shape[0],), 500, device=xs.device)
            if train:
                denoising_loss(u, model.schedule, xs, cs, t, torch.randn_like(xs), temporal=temporal).backward()
            else:
                with torch.no_grad():
                    u(xs, t, cs)
        return count_flops(run)

    f = DREAMIX.n_sample_frames
    video, image = per_step(model.network, f, True, True, True), per_step(model.network, f, True, False, True)
    sample = per_step(model.network, f, False)
    r = DREAMIX.image_ratio
    tune_flops = DREAMIX.max_train_steps * ((1 - r) * video + r * image)
    denoise_steps = round(DREAMIX.noise_strength * DREAMIX.num_inference_steps)
    edit_flops = denoise_steps * 2 * sample  # cfg: two forwards per step
    total = tune_flops + edit_flops
    print(f"Dreamix defaults: {f} frames 512x512, {DREAMIX.max_train_steps} whole-model steps at ratio {r}, "
          f"{denoise_steps} guided DDIM steps")
    print(f"  video step {video / 1e12:.2f} TFLOP, frame step {image / 1e12:.2f} TFLOP, sampling forward "
          f"{sample / 1e12:.2f} TFLOP")
    print(f"  total {total / 1e15:.2f} PFLOP -> {total / rate:.1f} s on one H100 at {ASSUMED_MFU:.0%} of "
          f"{H100_BF16_DENSE / 1e12:.0f} TFLOP/s (target <= 90 s)")
    f = EI2.n_sample_frames
    ei2 = model.network.with_attention("ei2-ffam", {"pool_size": EI2.ffam_pool_size}).with_temporal("ei2-stam")
    train, fwd = per_step(ei2, f, True), per_step(ei2, f, False)
    total = EI2.max_train_steps * train + EI2.num_inference_steps * (fwd + 2 * fwd)  # inversion + guided sampling
    print(f"EI² defaults: {f} frames 512x512, {EI2.max_train_steps} tuning steps (TAV trainable set), "
          f"{EI2.num_inference_steps} inversion + {EI2.num_inference_steps} guided sampling steps")
    print(f"  train step {train / 1e12:.2f} TFLOP, forward {fwd / 1e12:.2f} TFLOP; total {total / 1e15:.2f} PFLOP "
          f"-> {total / rate:.1f} s on one H100 at {ASSUMED_MFU:.0%} (target <= 90 s)")


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("what", choices=["shift", "ffam", "mixed", "budget"])
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--flops-only", action="store_true")
    a = ap.parse_args()
    {"shift": shift, "ffam": ffam, "mixed": mixed, "budget": budget}[a.what](a)


if __name__ == "__main__":
    sys.exit(main())
