"""Dreamix nodes (Molad et al., arXiv 2302.01329): mixed finetuning, corrupted-video inference, image-to-video."""

from __future__ import annotations

import logging

import torch

from ..modules.defaults import DREAMIX
from ..modules.methods.dreamix import (
    CAMERA_MOTIONS,
    DreamixConfig,
    corrupt_frames,
    corrupted_sample,
    dreamix_finetune,
    image_to_coarse_video,
    stack_images,
)
from ..modules.training.memory import OPTIMIZERS
from ..modules.training.trainable import parse_patterns
from . import host
from .boundary import VIDEO_UNET, conditioning_entries, latent_to_video, video_to_latent
from .common import seed_input
from .tune import FORCE_MEMORY, PRESETS, TuningNode, run_tuning
from .windows import check_context, context_input, denoising_progress, training_context_input

logger = logging.getLogger(__name__)


class DreamixFinetune(TuningNode):
    """Finetune a VIDEO_UNET on a clip as a video and as independent frames, mixed by image_ratio (Sec. 3.2)."""

    OUTPUT_TOOLTIPS = ("A new finetuned VIDEO_UNET (the input is left unchanged).", "Loss per step, as an image.")
    DESCRIPTION = ("Dreamix mixed video-image finetuning: each step is either the clip as a video (temporal layers "
                   "on) or its frames as independent images (temporal layers bypassed and untouched), drawn with "
                   "probability image_ratio. image_ratio 1 finetunes on frames only (subject-driven generation).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "Inflated UNet from InflateUNetTemporal (or a loaded delta)."}),
            "latent": ("LATENT", {"tooltip": "The clip's latents (frames as batch), from VAE Encode; for "
                                             "subject-driven generation, the subject images' latents."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt describing the clip (Dreamix uses the clip's caption)."}),
            "steps": ("INT", {"default": DREAMIX.max_train_steps, "min": 1, "max": 100000,
                              "tooltip": "Optimisation steps (our default 300; the paper gives no number for SD)."}),
            "learning_rate": ("FLOAT", {"default": DREAMIX.learning_rate, "min": 1e-7, "max": 1e-2, "step": 1e-6,
                                        "round": False, "tooltip": "AdamW learning rate (our default 1e-5 for the "
                                                                   "whole model; 1e-4 suits LoRA)."}),
            "seed": seed_input(DREAMIX.seed, "Seed for the video/frame schedule, the training noise and timesteps."),
            "image_ratio": ("FLOAT", {"default": DREAMIX.image_ratio, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "Share of steps that train on the frames as independent images "
                                                 "(temporal layers off). 0: video only (Tune-A-Video-like); 1: frames "
                                                 "only (subject-driven)."}),
            "trainable": (list(PRESETS) + ["custom"], {"default": DREAMIX.trainable,
                          "tooltip": "dreamix-full: the whole video model (the paper). dreamix-attention: every "
                                     "attention projection (spatial, cross, temporal). dreamix-lora: LoRA of "
                                     "lora_rank on those projections, merged at the end. tune-a-video*: the "
                                     "Tune-A-Video sets. custom: the patterns below."}),
            "custom_patterns": ("STRING", {"default": "attn1, attn2, attn_temp", "multiline": True,
                                           "tooltip": "Module-name suffixes or globs; used when trainable is "
                                                      "'custom'."}),
            "lora_rank": ("INT", {"default": DREAMIX.lora_rank, "min": 1, "max": 256,
                                  "tooltip": "LoRA rank, used by dreamix-lora only."}),
            "gradient_checkpointing": cls.checkpointing_input(DREAMIX.gradient_checkpointing),
            "mixed_precision": cls.precision_input(),
        }, "optional": {
            "prompt_note": ("STRING", {"default": "", "tooltip": "Prompt text, stored in saved weights' metadata."}),
            "optimizer": (list(OPTIMIZERS), {"default": "adamw",
                          "tooltip": "adamw: two fp32 moments per trained value (dreamix-full: about 10 GiB for "
                                     "SD1.5). adafactor (transformers): a factored second moment, a few MB; the "
                                     "memory-lean choice for dreamix-full."}),
            "force_memory": FORCE_MEMORY,
            "context": training_context_input(),
        }}

    def run(self, video_unet, latent, positive, steps, learning_rate, seed, image_ratio, trainable, custom_patterns,
            lora_rank, gradient_checkpointing, mixed_precision, prompt_note="", optimizer="adamw",
            force_memory=False, context=None):
        patterns = parse_patterns(custom_patterns if trainable == "custom" else trainable, PRESETS)
        config = DreamixConfig(steps=steps, learning_rate=learning_rate, trainable=patterns, seed=seed,
                               gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,
                               method="dreamix", image_ratio=image_ratio,
                               lora_rank=lora_rank if trainable == "dreamix-lora" else 0, optimizer=optimizer,
                               windows=context)
        return run_tuning(video_unet, latent, positive, config, "DreamixFinetune", prompt_note, force_memory,
                          dreamix_finetune)


class DreamixCorruptVideo:
    """Degrade frames the Dreamix way: downsample in space (and time), bring back to the working size (Sec. 3.1)."""

    CATEGORY = "TuneVideo/dreamix"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("degraded",)
    OUTPUT_TOOLTIPS = ("The degraded frames, same size and count; VAE Encode them for Dreamix Corrupted Sample.",)
    DESCRIPTION = "Keeps the low-resolution space-time information of the source; the model re-synthesises detail."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Source frames (e.g. from Load Video Clip)."}),
            "spatial_downsample": ("INT", {"default": DREAMIX.spatial_downsample, "min": 1, "max": 64,
                                           "tooltip": "Area-downsample factor in pixels, then bilinear back up "
                                                      "(our default 4; 1: off)."}),
            "temporal_downsample": ("INT", {"default": DREAMIX.temporal_downsample, "min": 1, "max": 16,
                                            "tooltip": "Keep every k-th frame and hold it (1: off)."}),
        }}

    def run(self, images, spatial_downsample, temporal_downsample):
        return (corrupt_frames(images, spatial_downsample, temporal_downsample),)


class DreamixCorruptedSample:
    """Noise the encoded degraded video to noise scale s and denoise it with the finetuned model (Sec. 3.1)."""

    CATEGORY = "TuneVideo/dreamix"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT", "INT")
    RETURN_NAMES = ("latent", "start_timestep")
    OUTPUT_TOOLTIPS = ("The edited video latents, frames as batch.",
                       "Training timestep the denoising starts from (-1: strength 0, nothing done).")
    DESCRIPTION = ("Dreamix inference: x_s = sqrt(a) x + sqrt(1-a) noise at the DDIM timestep matching noise "
                   "strength s, then guided DDIM to the end. Strength 1 starts from pure noise.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The finetuned VIDEO_UNET (Dreamix Finetune)."}),
            "positive": ("CONDITIONING", {"tooltip": "Edit prompt."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt (empty is fine)."}),
            "latent": ("LATENT", {"tooltip": "VAE Encode of the degraded frames (Dreamix Corrupt Video)."}),
            "noise_strength": ("FLOAT", {"default": DREAMIX.noise_strength, "min": 0.0, "max": 1.0, "step": 0.01,
                                         "tooltip": "Noise scale s: how much is re-synthesised (higher edits "
                                                    "motion and appearance more, keeps less of the source)."}),
            "steps": ("INT", {"default": DREAMIX.num_inference_steps, "min": 1, "max": 1000,
                              "tooltip": "DDIM grid; round(s * steps) of its steps run."}),
            "cfg": ("FLOAT", {"default": DREAMIX.guidance_scale, "min": 0.0, "max": 50.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale."}),
            "seed": seed_input(DREAMIX.seed, "Seed of the added noise."),
        }, "optional": {"context": context_input()}}

    def run(self, video_unet, positive, negative, latent, noise_strength, steps, cfg, seed, context=None):
        cond = conditioning_entries(positive, "positive", video_unet)
        uncond = conditioning_entries(negative, "negative", video_unet)
        x0 = latent_to_video(latent, video_unet.latent_scale, "latent")
        windows = check_context(context, video_unet, x0.shape[2])
        callback, on_window = denoising_progress(steps, "DreamixCorruptedSample", windows, x0.shape[2])
        device = host.torch_device()
        host.free_accelerator()
        fn = video_unet.model_fn(device, windows=windows, on_window=on_window)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out, t0 = corrupted_sample(fn, video_unet.schedule, x0.to(device), cond, uncond, noise_strength, steps, cfg,
                                   generator=gen, callback=callback)
        logger.info("DreamixCorruptedSample: noise strength %.2f starts at timestep %d", noise_strength, t0)
        return video_to_latent(out, video_unet.latent_scale), t0


class ImageToCoarseVideo:
    """One image -> a coarse video by replication and a simple camera motion (Dreamix Sec. 4.2)."""

    CATEGORY = "TuneVideo/dreamix"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The coarse video; finetune on it and sample from its degraded version to animate it.",)
    DESCRIPTION = "Zoom in/out, pan or perspective tilt over the replicated image."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "One image (the first of a batch is refused: pick one)."}),
            "frames": ("INT", {"default": DREAMIX.n_sample_frames, "min": 1, "max": 128, "tooltip": "Frames."}),
            "camera_motion": (list(CAMERA_MOTIONS), {"default": "zoom-in", "tooltip": "Camera motion over the clip."}),
            "motion_amount": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "Zoom factor - 1 (0.25: 1.25x), or the perspective narrowing."}),
        }}

    def run(self, image, frames, camera_motion, motion_amount):
        return (image_to_coarse_video(image, frames, camera_motion, motion_amount),)


class StackSubjectImages:
    """Collect a list of subject images into one batch, refusing mixed sizes (Dreamix Sec. 4.3)."""

    CATEGORY = "TuneVideo/dreamix"
    FUNCTION = "run"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("All images as one batch; VAE Encode it and finetune with image_ratio 1.",)
    DESCRIPTION = "A few images of one subject -> one IMAGE batch (all images must have one size)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {"tooltip": "Images of the subject (a list or batches)."})}}

    def run(self, images):
        return (stack_images(images, "images"),)
