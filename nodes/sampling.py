"""DDIMInvertVideo and SampleVideo: Tune-A-Video inference (Sec. 4.3)."""

from __future__ import annotations

import logging

import torch

from ..modules.defaults import TAV
from ..modules.sampling.ddim import ddim_invert, sample
from . import host
from .boundary import (
    INVERTED_KEY,
    VIDEO_UNET,
    check_tuned_frames,
    conditioning_entries,
    latent_to_video,
    video_to_latent,
)
from .common import seed_input
from .windows import check_context, context_input, denoising_progress

logger = logging.getLogger(__name__)


class DDIMInvertVideo:
    """DDIM-invert source latents into structure-preserving noise."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("Inverted noise x_T (unscaled LATENT, tagged so SampleVideo starts from it).",)
    DESCRIPTION = "Deterministic DDIM inversion x_0 -> x_T with the (usually empty) prompt, as in Tune-A-Video."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The tuned VIDEO_UNET."}),
            "latent": ("LATENT", {"tooltip": "Source video latents (frames as batch), from VAE Encode."}),
            "conditioning": ("CONDITIONING", {"tooltip": "Prompt used for inversion; Tune-A-Video uses the empty "
                                                         "prompt. Several entries (Conditioning Combine) are averaged "
                                                         "by strength, as KSampler does."}),
            "steps": ("INT", {"default": TAV.num_inv_steps, "min": 1, "max": 1000,
                              "tooltip": "Inversion steps; use the same number in SampleVideo (50)."}),
        }, "optional": {"context": context_input()}}

    def run(self, video_unet, latent, conditioning, steps, context=None):
        x0 = latent_to_video(latent, video_unet.latent_scale, "latent")
        text = conditioning_entries(conditioning, "conditioning", video_unet)
        windows = check_context(context, video_unet, x0.shape[2])
        callback, on_window = denoising_progress(steps, "DDIMInvertVideo", windows, x0.shape[2])
        device = host.torch_device()
        host.free_accelerator()
        fn = video_unet.model_fn(device, windows=windows, on_window=on_window)
        x_t = ddim_invert(fn, video_unet.schedule, x0.to(device), text, steps, callback=callback)
        tag = {"steps": steps, "frames": x0.shape[2], "base_hash": video_unet.base_hash}
        return (video_to_latent(x_t, video_unet.latent_scale, **{INVERTED_KEY: tag}),)


class SampleVideo:
    """DDIM-sample a video with classifier-free guidance."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Edited video latents, frames as batch; decode with VAE Decode.",)
    DESCRIPTION = ("DDIM sampling from inverted noise (DDIMInvertVideo) or, for any other LATENT such as Empty Latent "
                   "Image, from fresh seeded noise of its shape.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The tuned VIDEO_UNET."}),
            "positive": ("CONDITIONING", {"tooltip": "Edited prompt, any length. Several entries (Conditioning "
                                                     "Combine) are averaged by strength, as KSampler does."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt (Tune-A-Video: empty), any length."}),
            "latent": ("LATENT", {"tooltip": "Inverted noise from DDIMInvertVideo, or an empty latent with one "
                                             "batch entry per frame for fresh noise."}),
            "steps": ("INT", {"default": TAV.num_inference_steps, "min": 1, "max": 1000,
                              "tooltip": "DDIM steps (Tune-A-Video: 50)."}),
            "cfg": ("FLOAT", {"default": TAV.guidance_scale, "min": 0.0, "max": 50.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale (Tune-A-Video: 12.5)."}),
            "eta": ("FLOAT", {"default": TAV.eta, "min": 0.0, "max": 1.0, "step": 0.01,
                              "tooltip": "DDIM eta: 0 is deterministic."}),
            "seed": seed_input(TAV.seed, "Seed for fresh noise and for eta > 0."),
        }, "optional": {"context": context_input()}}

    def run(self, video_unet, positive, negative, latent, steps, cfg, eta, seed, context=None):
        cond = conditioning_entries(positive, "positive", video_unet)
        uncond = conditioning_entries(negative, "negative", video_unet)
        device = host.torch_device()
        x = latent_to_video(latent, video_unet.latent_scale, "latent")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        tag = latent.get(INVERTED_KEY)
        warning = None
        if tag is None:
            x = torch.randn(x.shape, generator=gen)
        else:
            warning = _check_inverted(tag, video_unet, steps)
        windows = check_context(context, video_unet, x.shape[2])
        callback, on_window = denoising_progress(steps, "SampleVideo", windows, x.shape[2])
        host.free_accelerator()
        fn = video_unet.model_fn(device, windows=windows, on_window=on_window)
        out = sample(fn, video_unet.schedule, x.to(device), cond, uncond, steps, cfg, eta, generator=gen,
                     callback=callback)
        result = (video_to_latent(out, video_unet.latent_scale),)
        return result if warning is None else {"ui": {"text": [warning]}, "result": result}


def _check_inverted(tag: dict, video_unet, steps: int) -> str | None:
    """Refuse noise inverted over another frame count; warn (console, and the returned text) when it was inverted
    with another base model: not an error, MotionDirector samples a trained model from its base's inverted noise."""
    check_tuned_frames(tag.get("frames"), video_unet, "latent: inverted noise")
    if tag.get("steps") != steps:
        logger.warning("SampleVideo: noise was inverted with %s steps but sampling uses %d; the start noise level "
                       "differs slightly", tag.get("steps"), steps)
    made, own = tag.get("base_hash"), video_unet.base_hash
    if made and own and made != own:
        warning = (f"SampleVideo: the latent was inverted with another base model ({made}) than this VIDEO_UNET's "
                   f"({own}); the result will not follow the source video's structure. Invert with the model you "
                   f"sample with, unless this is intended")
        logger.warning("%s", warning)
        return warning
    return None
