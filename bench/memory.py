"""Resident memory of the node chain as ComfyUI runs it: weights loaded under ``torch.inference_mode``.

Builds a random SD1.5-size UNet whose LDM weights are inference tensors (as ComfyUI's loader leaves them), then runs
the node faces InflateUNetTemporal -> OneShotTune (1 step) -> SaveTunedVideoUNet -> LoadTunedVideoUNet and prints
the process RSS after each, with every earlier output kept alive (ComfyUI caches node outputs). A node that copies
the frozen 2D weights instead of sharing them adds a whole UNet (about 1.6 GiB in fp16) to the RSS.

    python bench/memory.py                  # SD1.5 size, fp16 weights, CPU
    python bench/memory.py --dtype fp32     # what a CPU-only ComfyUI holds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
from types import SimpleNamespace

import torch
from common import CONFIGS


def rss_gib() -> float:
    """Resident set size after a GC and glibc's malloc_trim, so memory freed but cached by malloc is not counted."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 2**20


def fake_comfy_model(size: str, dtype: torch.dtype):
    """What the nodes read off a ComfyUI ModelPatcher, with weights made under inference mode."""
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config, unet_to_ldm
    from tunevideo.modules.sampling.schedule import NoiseSchedule

    cfg = CONFIGS[size]
    torch.manual_seed(0)
    with torch.inference_mode():
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)).to(dtype)
        ldm = {k: v.clone() for k, v in unet_to_ldm(unet).items()}
    del unet
    s = NoiseSchedule.scaled_linear()
    inner = SimpleNamespace(
        diffusion_model=SimpleNamespace(state_dict=lambda: dict(ldm)),
        model_config=type("SD15", (), {"unet_config": cfg})(),
        model_type=SimpleNamespace(name="EPS"),
        model_sampling=SimpleNamespace(sigmas=((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().float()),
        latent_format=SimpleNamespace(scale_factor=0.18215),
    )
    return SimpleNamespace(model=inner), cfg["context_dim"], sum(v.numel() * v.element_size() for v in ldm.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(CONFIGS), default="sd15")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    a = ap.parse_args()
    os.environ.setdefault("TUNEVIDEO_HOME", tempfile.mkdtemp(prefix="tunevideo_bench_"))
    from tunevideo import NODE_CLASS_MAPPINGS as N

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    rows = [("start", rss_gib())]
    model, dim, nbytes = fake_comfy_model(a.size, dtype)
    rows.append(("base weights (inference tensors)", rss_gib()))
    keep = []
    latent = {"samples": torch.randn(2, 4, 16, 16)}
    cond = [[torch.randn(1, 77, dim), {}]]
    with torch.inference_mode():
        keep.append(N["InflateUNetTemporal"]().inflate(model)[0])
        rows.append(("InflateUNetTemporal", rss_gib()))
        tuned, _ = N["OneShotTune"]().run(keep[0], latent, cond, steps=1, learning_rate=1e-5, seed=0,
                                          trainable="tune-a-video", custom_patterns="", batch_size=1,
                                          gradient_checkpointing=True, mixed_precision="auto")
        keep.append(tuned)
        rows.append(("OneShotTune (result kept)", rss_gib()))
        saved = N["SaveTunedVideoUNet"]().save(tuned, "bench/memory")
        rel = saved["result"][0] if isinstance(saved, dict) else saved[0]  # older releases returned a ui dict
        keep.append(N["LoadTunedVideoUNet"]().load(keep[0], rel, check_base=True)[0])
        rows.append(("LoadTunedVideoUNet", rss_gib()))
    print(f"model: {a.size}, weights {a.dtype} ({nbytes / 2**30:.2f} GiB), torch {torch.__version__}")
    prev = rows[0][1]
    for name, value in rows:
        print(f"{name:36s} RSS {value:6.2f} GiB  (+{value - prev:5.2f})")
        prev = value
    print(f"total over base weights: +{rows[-1][1] - rows[1][1]:.2f} GiB")


if __name__ == "__main__":
    main()
