"""Benchmark helpers: model configs, FLOP counting (torch.utils.flop_counter), timing and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # allow running from a plain checkout

# ComfyUI-style unet_configs: the real SD1.5 layout and a small one of the same shape for CPU runs.
CONFIGS = {
    "sd15": {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2] * 4,
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1, "context_dim": 768,
             "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False, "in_channels": 4,
             "out_channels": 4, "adm_in_channels": None},
    "small": {"model_channels": 64, "channel_mult": [1, 2, 2, 2], "num_res_blocks": [2] * 4,
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1, "context_dim": 128,
              "num_heads": 4, "num_head_channels": -1, "use_linear_in_transformer": False, "in_channels": 4,
              "out_channels": 4, "adm_in_channels": None},
}


def bench_parser(doc: str):
    """Arguments every benchmark takes: device, model size and clip shape."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", choices=list(CONFIGS), default="small")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    return ap


def build_video_model(size: str, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.modules.sampling.schedule import NoiseSchedule
    from tunevideo.modules.video_unet import VideoUNet

    cfg = CONFIGS[size]
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(cfg)).to(dtype).eval()
    return VideoUNet(inflate_unet(unet), NoiseSchedule.scaled_linear()), cfg["context_dim"]


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


def describe(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import os
    return f"CPU x{os.cpu_count()} threads={torch.get_num_threads()}"
