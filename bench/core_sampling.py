"""A VIDEO_UNET through ComfyUI's own sampler vs the pack's SampleVideo, on the same work: per-step time and ratio.

Runs with a ComfyUI checkout's Python (ComfyUI is not on the package index):

    /path/to/comfy-venv/bin/python bench/core_sampling.py --comfyui /path/to/ComfyUI [--size host|sd15]
        [--frames 4] [--latent 16] [--steps 6] [--device cpu|cuda]

Both paths start from the same DDIM-inverted noise and run the same number of cfg steps (two UNet evaluations per
step, cond and uncond): SampleVideo's DDIM loop vs SamplerCustom with the ``ddim`` sampler on InvertedNoiseSigmas'
sigmas through VideoUNetAsModel (core batches cond and uncond into one call; the wrapper runs them as two clips).
The model is a random SD1.5-layout checkpoint written to a temporary file (``host``: 2 levels of 320 channels, what
ComfyUI still detects as SD1.5; ``sd15``: the full layout). Prints one row per path and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "host": {"channel_mult": [1, 1], "num_res_blocks": [1, 1], "transformer_depth": [1, 0]},
    "sd15": {"channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (or $COMFYUI_PATH)")
    ap.add_argument("--size", choices=list(SIZES), default="host")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--latent", type=int, default=16, help="latent height = width (pixels / 8)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not args.comfyui or not (Path(args.comfyui) / "comfy").is_dir():
        sys.exit("bench/core_sampling.py: give --comfyui PATH (a ComfyUI checkout) and run it with ComfyUI's Python")
    sys.path.insert(0, args.comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.device == "cpu"
    import comfy.samplers
    import comfy.sd
    import torch
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    from safetensors.torch import save_file

    work = Path(tempfile.mkdtemp())
    os.symlink(ROOT, work / "tunevideo")
    sys.path.insert(0, str(work))
    sys.path.insert(0, str(ROOT / "tests"))
    import tunevideo
    from diffusers import UNet2DConditionModel
    from test_comfyui_host import HOST_UNET
    from tunevideo.modules.convert.unet import diffusers_config_from_unet_config, unet_to_ldm

    torch.manual_seed(0)
    config = {**HOST_UNET, **SIZES[args.size]}
    unet = UNet2DConditionModel(**diffusers_config_from_unet_config(config))
    ckpt = work / "model.safetensors"
    save_file({k: v.detach().half().contiguous() for k, v in unet_to_ldm(unet, "model.diffusion_model.").items()},
              str(ckpt))
    del unet
    model = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=False, output_clip=False)[0]
    nodes = tunevideo.NODE_CLASS_MAPPINGS
    (video_unet,) = nodes["InflateUNetTemporal"]().inflate(model)
    pos = [[torch.randn(1, 77, 768), {}]]
    neg = [[torch.randn(1, 77, 768), {}]]
    source = {"samples": torch.randn(args.frames, 4, args.latent, args.latent)}
    (noise,) = nodes["DDIMInvertVideo"]().run(video_unet, source, neg, args.steps)
    (model_core,) = nodes["VideoUNetAsModel"]().run(model, video_unet, 0)
    sigmas, start = nodes["InvertedNoiseSigmas"]().run(model_core, noise, "ddim", "alpha_0", 0)
    sampler = comfy.samplers.sampler_object("ddim")

    def pack():
        out = nodes["SampleVideo"]().run(video_unet, pos, neg, noise, args.steps, 7.5, 0.0, 0)
        return out["result"] if isinstance(out, dict) else out

    def core():
        return SamplerCustom().sample(model_core, False, 0, 7.5, pos, neg, sampler, sigmas, start)

    rows = []
    for name, fn in (("SampleVideo (pack DDIM loop)", pack), ("SamplerCustom ddim via VideoUNetAsModel", core)):
        fn()  # warm-up: first loads, allocator
        t0 = time.perf_counter()
        fn()
        rows.append((name, (time.perf_counter() - t0) / args.steps))
    print(f"{args.size} layout, {args.frames} frames, latent {args.latent}x{args.latent}, {args.steps} cfg steps, "
          f"{args.device}, torch {torch.__version__}")
    for name, per_step in rows:
        print(f"  {name:<42} {per_step:8.3f} s/step")
    print(f"  ratio core / pack: {rows[1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()
