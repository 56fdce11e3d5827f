"""Forward time, FLOPs and peak memory of the inflated (Tune-A-Video) UNet.

    python bench/inflate.py                              # CPU, small config, 8 frames 128x128
    python bench/inflate.py --device cuda --size sd15 --frames 24 --height 512 --width 512 --dtype bf16
"""

from __future__ import annotations

import torch
from common import bench_parser, build_video_model, count_flops, describe, peak_memory_gib, reset_peak, timed

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    dtype = DTYPES[a.dtype]
    model, ctx_dim = build_video_model(a.size, a.device, dtype)
    unet = model.network
    x = torch.randn(a.batch, 4, a.frames, a.height // 8, a.width // 8, device=a.device, dtype=dtype)
    t = torch.tensor([500], device=a.device)
    ctx = torch.randn(a.batch, 77, ctx_dim, device=a.device, dtype=dtype)

    def forward():
        with torch.no_grad():
            unet(x, t, ctx)

    params = sum(p.numel() for p in unet.parameters())
    flops = count_flops(forward)
    reset_peak(a.device)
    sec = timed(forward, a.device, a.repeats)
    print(f"device: {describe(a.device)}  torch {torch.__version__}")
    print(f"model: {a.size} ({params / 1e6:.1f}M params, {len(unet.temporal_parameters())} temporal tensors) "
          f"{a.dtype}; input b={a.batch} f={a.frames} {a.height}x{a.width}")
    print(f"forward: {sec * 1e3:.1f} ms  FLOPs/forward: {flops / 1e9:.1f} GFLOP  "
          f"achieved: {flops / sec / 1e12:.3f} TFLOP/s  peak memory: {peak_memory_gib(a.device):.2f} GiB")


if __name__ == "__main__":
    main()
