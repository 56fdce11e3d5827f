"""Video-P2P phases: one null-text outer step (inner Adam steps counted) and one controlled two-branch sampling step.

Prints s/step, FLOPs/step, achieved TFLOP/s and peak memory, and projects the whole edit (tuning + null-text
inversion + edit) of the paper's setting. --flops-only counts FLOPs on the meta device (no compute) for the issue's
H100 target: 8 frames 512x512, tune 300 steps + null-text inversion + edit in 60 s.

    python bench/video_p2p.py                          # CPU, small config, 4 frames 128x128
    python bench/video_p2p.py --flops-only --size sd15 --frames 8 --height 512 --width 512
"""

from __future__ import annotations

import torch
from common import bench_parser, build_video_model, count_flops, describe, peak_memory_gib, reset_peak, timed
from tunevideo.modules.methods.video_p2p.control import AttentionController, EditControl, controlled_unet
from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, _optimise_step

H100_BF16_DENSE = 989e12


def _control():
    blend = torch.zeros(77)
    blend[2] = 1
    return EditControl(word_swap=False, mapper=torch.arange(77), alphas=torch.ones(77),
                       reweight=torch.ones(77), blend_src=blend, blend_edit=blend)


def main() -> None:
    ap = bench_parser(__doc__)
    ap.set_defaults(frames=4)
    ap.add_argument("--inner", type=int, default=10, help="inner Adam steps per null-text step (reference: <= 10)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--flops-only", action="store_true")
    a = ap.parse_args()
    dev = torch.device("meta" if a.flops_only else a.device)
    model, ctx_dim = build_video_model(a.size, "meta" if a.flops_only else a.device, torch.float32)
    unet = model.network.with_attention("video-p2p")
    with torch.device(dev):
        z = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8)
        cond, uncond = torch.randn(1, 77, ctx_dim), torch.randn(1, 77, ctx_dim)
        ctx4 = torch.randn(4, 77, ctx_dim)
    fn = lambda x, t, c: unet(x, t, c)  # noqa: E731
    cfg = NullTextConfig(inner_steps=a.inner, early_stop_epsilon=-1.0)  # never stops early: the worst case

    def null_step():
        _optimise_step(fn, model.schedule, z, 981, 961, uncond, cond, z, 0, cfg)

    def null_step_flops():  # the same work without the host-side early-stop check (runs on the meta device)
        t = torch.tensor([981], device=dev)
        with torch.no_grad():
            fn(z, t, cond)
        u = uncond.clone().requires_grad_(True)
        for _ in range(a.inner):
            fn(z, t, u).float().pow(2).mean().backward()

    controller = AttentionController(_control(), 50)
    controlled = controlled_unet(unet, controller)

    def edit_step():
        with torch.no_grad():
            controlled(torch.cat([z] * 4), torch.tensor([981], device=dev), ctx4)

    print(f"device: {describe(a.device) if not a.flops_only else 'meta (FLOPs only)'}  torch {torch.__version__}")
    print(f"model: {a.size}, clip f={a.frames} {a.height}x{a.width}, {a.inner} inner steps per null-text step")
    flops_null, flops_edit = count_flops(null_step_flops), count_flops(edit_step)
    if a.flops_only:
        return _project(a, flops_null, flops_edit)
    for name, step, flops in (("null-text", null_step, flops_null), ("edit", edit_step, flops_edit)):
        reset_peak(a.device)
        sec = timed(step, a.device, a.repeats)
        print(f"  {name:>9}: {sec:.3f} s/step  {flops / 1e12:.3f} TFLOP/step  {flops / sec / 1e12:.3f} TFLOP/s  "
              f"peak {peak_memory_gib(a.device):.2f} GiB")


def _project(a, flops_null, flops_edit) -> None:
    from tunevideo.modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS
    from tunevideo.modules.training.trainable import select_trainable

    model, ctx_dim = build_video_model(a.size, "meta", torch.float32)
    unet = model.network.with_attention("video-p2p")
    names = set(select_trainable(unet, TUNE_A_VIDEO_PRESETS["tune-a-video-reference"]))
    for n, p in unet.named_parameters():
        p.requires_grad_(n in names)
    with torch.device("meta"):
        x, c = torch.randn(1, 4, a.frames, a.height // 8, a.width // 8), torch.randn(1, 77, ctx_dim)
    fwd = count_flops(lambda: unet(x, torch.tensor([500], device="meta"), c).detach())
    tune = count_flops(lambda: unet(x, torch.tensor([500], device="meta"), c).float().pow(2).mean().backward()) + fwd
    inversion = 50 * fwd  # the unguided DDIM path
    total = 300 * tune + inversion + 50 * flops_null + 50 * flops_edit
    print(f"  tuning step {tune / 1e12:.2f} TFLOP; null-text step ({a.inner} inner) {flops_null / 1e12:.2f} TFLOP; "
          f"edit step {flops_edit / 1e12:.2f} TFLOP")
    print(f"  whole edit (300 tuning steps + inversion + 50 null-text + 50 edit steps): {total / 1e12:.0f} TFLOP; "
          f"in 60 s needs {total / 60 / 1e12:.0f} TFLOP/s = {total / 60 / H100_BF16_DENSE:.0%} of H100 dense bf16")


if __name__ == "__main__":
    main()
