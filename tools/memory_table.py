"""README's table of training-memory estimates at the shipped default sizes (modules/training/memory.py's formula).

SD1.5-size networks are built on the meta device: parameters are counted, no weights are made.

    python tools/memory_table.py          # prints the markdown table
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tunevideo.modules.convert.unet import diffusers_config_from_unet_config  # noqa: E402
from tunevideo.modules.defaults import DREAMIX, TAV  # noqa: E402
from tunevideo.modules.methods.motion_director import MotionDirectorConfig  # noqa: E402
from tunevideo.modules.training.memory import GIB, lora_train_estimate, tune_estimate  # noqa: E402
from tunevideo.modules.training.tune import TuneConfig  # noqa: E402
from tunevideo.nodes.tune import PRESETS  # noqa: E402

SD15 = {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2] * 4,
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1, "context_dim": 768,
        "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False, "in_channels": 4,
        "out_channels": 4, "adm_in_channels": None}
CUDA = torch.device("cuda")
MD = MotionDirectorConfig()


def sd15_networks():
    """``(inflated, animatediff)`` SD1.5-size video networks on the meta device, fp16 weights (ComfyUI on a GPU)."""
    from diffusers import UNet2DConditionModel
    from tunevideo.modules.networks.animatediff import build_motion_unet
    from tunevideo.modules.networks.inflate import inflate_unet
    from tunevideo.tiny import tiny_motion_module

    with torch.device("meta"):
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(SD15)).half()
        inflated = inflate_unet(unet).half()
        motion = build_motion_unet(unet, tiny_motion_module("v2", unet_config=SD15), "mm_sd_v15_v2").half()
    return inflated, motion


def rows():
    inflated, motion = sd15_networks()
    tav = (1, 4, TAV.n_sample_frames, TAV.height // 8, TAV.width // 8)
    dx = (1, 4, DREAMIX.n_sample_frames, 64, 64)
    for preset in ("tune-a-video", "tune-a-video-reference"):
        cfg = TuneConfig(trainable=PRESETS[preset], gradient_checkpointing=TAV.gradient_checkpointing)
        yield "OneShotTune", preset, "AdamW", f"{tav[2]} x 512x512", tune_estimate(inflated, tav, cfg, CUDA)
    for preset, opt in (("dreamix-full", "adamw"), ("dreamix-full", "adafactor"), ("dreamix-attention", "adamw"),
                        ("dreamix-lora", "adamw")):
        cfg = TuneConfig(trainable=PRESETS[preset], gradient_checkpointing=True, optimizer=opt,
                         lora_rank=DREAMIX.lora_rank if preset == "dreamix-lora" else 0)
        name = {"adamw": "AdamW", "adafactor": "Adafactor"}[opt]
        yield "DreamixFinetune", preset, name, f"{dx[2]} x 512x512", tune_estimate(inflated, dx, cfg, CUDA)
    md = (1, 4, 16, 48, 48)  # workflows/motion_director.json: 16 frames 384x384, AnimateDiff v2
    for paths in ("spatial+temporal", "spatial", "temporal"):
        est = lora_train_estimate(motion, [md], int(paths != "temporal"), paths != "spatial", MD.rank,
                                  MD.gradient_checkpointing, "auto", CUDA)
        yield "SpatialTemporalLoRATrain", paths, "AdamW", "16 x 384x384", est


def main() -> None:
    lines = ["| node | preset | optimiser | clip | weights | gradients | optimiser state | activations | total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for node, preset, opt, clip, e in rows():
        g = [f"{x / GIB:.1f}" for x in (e.weights, e.gradients, e.optimizer_state, e.activations, e.total)]
        lines.append(f"| {node} | {preset} | {opt} | {clip} | " + " | ".join(g[:4]) + f" | **{g[4]} GiB** |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
