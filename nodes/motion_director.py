"""MotionDirector nodes: dual-path LoRA training, LoRA save/load/apply, and the inverted-noise prior."""

from __future__ import annotations

import logging

import torch

from ..modules.files.plot import loss_curve_image
from ..modules.methods import motion_director as md
from ..modules.methods.motion_director import NOISE_PRIOR, PATHS, MotionDirectorConfig, train
from ..modules.training import lora as L
from ..modules.training.memory import check_fits, lora_train_estimate
from ..modules.training.tune import PRECISIONS
from . import host
from .boundary import INVERTED_KEY, VIDEO_UNET, conditioning_entries, latent_to_video, parked, video_to_latent
from .common import save_path, seed_input
from .tune import FORCE_MEMORY
from .windows import training_context_input

logger = logging.getLogger(__name__)

VIDEO_LORA = "VIDEO_LORA"  # one LoRAWeights, or a tuple of them (one spatial LoRA per training video)
MD = MotionDirectorConfig()


def split_clips(latent: dict, frames_per_video: int, scale: float) -> list[torch.Tensor]:
    """A LATENT holding one clip, or several clips one after the other (``frames_per_video`` each), -> clips."""
    video = latent_to_video(latent, scale, "latent")
    total = video.shape[2]
    if frames_per_video <= 0 or frames_per_video == total:
        return [video]
    if total % frames_per_video:
        raise ValueError(f"latent has {total} frames, not a multiple of frames_per_video={frames_per_video}: batch "
                         f"the training videos (Latent Batch) with the same frame count each")
    return list(video.split(frames_per_video, dim=2))


def video_prompts(positive, videos: int, video_unet) -> list[torch.Tensor]:
    """One prompt for every video, or one per video: a Conditioning (Combine) of exactly ``videos`` entries, in video
    order (here Combine lists prompts; it does not average them)."""
    entries = conditioning_entries(positive, "positive", video_unet)
    if len(entries) == 1:
        return [entries[0][0]] * videos
    if len(entries) != videos:
        raise ValueError(f"positive has {len(entries)} entries for {videos} videos: give one prompt for all, or "
                         f"one per video (Conditioning Combine, in video order)")
    return [context for context, _ in entries]


class SpatialTemporalLoRATrain:
    """MotionDirector: learn a motion as a temporal LoRA, with per-video spatial LoRAs absorbing appearance."""

    CATEGORY = "TuneVideo/train"
    FUNCTION = "run"
    RETURN_TYPES = (VIDEO_UNET, VIDEO_LORA, VIDEO_LORA, "IMAGE", "IMAGE")
    RETURN_NAMES = ("video_unet", "temporal_lora", "spatial_loras", "spatial_loss", "temporal_loss")
    OUTPUT_TOOLTIPS = (
        "A new VIDEO_UNET with the temporal LoRA and the (first video's) spatial LoRA baked in (input untouched).",
        "The motion: save it (Save Video LoRA -> models/animatediff_motion_lora) or apply it to another VIDEO_UNET.",
        "The appearance LoRA(s), one per training video (Save Video LoRA -> models/loras).",
        "Spatial-path loss per step (gaps: skipped steps).", "Temporal-path loss (plain + appearance-debiased).")
    DESCRIPTION = ("MotionDirector (Zhao et al. 2023) dual-path LoRA: spatial LoRA on single frames, temporal LoRA on "
                   "whole clips using (never updating) the spatial LoRA, appearance-debiased temporal loss. Works on "
                   "AnimateDiff and inflated video UNets.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "AnimateDiff (AnimateDiffVideoUNet) or inflated "
                                                   "(InflateUNetTemporal) video UNet."}),
            "latent": ("LATENT", {"tooltip": "Reference video latents (frames as batch, VAE Encode). Several videos: "
                                             "batch them one after the other (Latent Batch) and set "
                                             "frames_per_video."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt describing the reference video(s), e.g. 'A person is "
                                                     "riding a bicycle': one for every video (MotionDirector's "
                                                     "multi-video config), or one per video joined with "
                                                     "Conditioning (Combine) in video order."}),
            "frames_per_video": ("INT", {"default": 0, "min": 0, "max": 4096,
                                         "tooltip": "Frames of each video in latent; 0: the latent is one video."}),
            "steps": ("INT", {"default": MD.steps, "min": 1, "max": 100000,
                              "tooltip": f"Training steps (MotionDirector: {MD.steps} for one video, 3000 for "
                                         f"several)."}),
            "rank": ("INT", {"default": MD.rank, "min": 1, "max": 256,
                             "tooltip": f"LoRA rank (MotionDirector: {MD.rank})."}),
            "lr_spatial": ("FLOAT", {"default": MD.lr_spatial, "min": 1e-7, "max": 1e-1, "step": 1e-5, "round": False,
                                     "tooltip": f"AdamW learning rate of the spatial LoRAs (MotionDirector: "
                                                f"{MD.lr_spatial:g})."}),
            "lr_temporal": ("FLOAT", {"default": MD.lr_temporal, "min": 1e-7, "max": 1e-1, "step": 1e-5,
                                      "round": False,
                                      "tooltip": f"AdamW learning rate of the temporal LoRA (MotionDirector: "
                                                 f"{MD.lr_temporal:g})."}),
            "seed": seed_input(MD.seed, "Seed of noise, timesteps, frame choices and LoRA init; fixed by default so "
                                        "a re-queue does not retrain."),
            "paths": (list(PATHS), {"default": MD.paths,
                                    "tooltip": "spatial+temporal: MotionDirector. spatial: appearance only (e.g. one "
                                               "image to animate with a saved temporal LoRA). temporal: motion "
                                               "only."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": MD.gradient_checkpointing,
                                                   "tooltip": "Less memory, about 30% slower."}),
            "mixed_precision": (list(PRECISIONS), {"default": MD.mixed_precision,
                                "tooltip": "auto: bf16 autocast on GPU, fp32 on CPU. LoRAs train in fp32."}),
        }, "optional": {
            "output_spatial_strength": ("FLOAT", {"default": MD.output_spatial_strength, "min": 0.0, "max": 2.0,
                                                  "step": 0.05,
                                                  "tooltip": "Spatial LoRA strength in the returned VIDEO_UNET. 0: "
                                                             "motion only (MotionDirector's inference for new "
                                                             "subjects)."}),
            "prompt_note": ("STRING", {"default": "", "tooltip": "Prompt text stored in the LoRA files' metadata "
                                                                 "(CONDITIONING carries no text); per-video prompts "
                                                                 "separated by '|'."}),
            "force_memory": FORCE_MEMORY,
            "context": training_context_input(),
        }}

    def run(self, video_unet, latent, positive, frames_per_video, steps, rank, lr_spatial, lr_temporal, seed, paths,
            gradient_checkpointing, mixed_precision, output_spatial_strength=MD.output_spatial_strength,
            prompt_note="", force_memory=False, context=None):
        config = MotionDirectorConfig(steps=steps, rank=rank, lr_spatial=lr_spatial, lr_temporal=lr_temporal,
                                      seed=seed, paths=paths, gradient_checkpointing=gradient_checkpointing,
                                      mixed_precision=mixed_precision, output_spatial_strength=output_spatial_strength,
                                      windows=context)
        clips = split_clips(latent, frames_per_video, video_unet.latent_scale)
        contexts = video_prompts(positive, len(clips), video_unet)
        host.free_accelerator()
        device = host.torch_device()
        n_spatial = len(clips) if paths != "temporal" else 0
        est = lora_train_estimate(video_unet.network, [c.shape for c in clips], n_spatial, paths != "spatial", rank,
                                  gradient_checkpointing, mixed_precision, device, config.windows)
        check_fits(est, device, force_memory, "SpatialTemporalLoRATrain")
        result = train(video_unet, clips, contexts, config, device=device,
                       callback=host.Progress(steps, "SpatialTemporalLoRATrain"), prompt=prompt_note)
        return (parked(result.video_unet), result.temporal, result.spatial,
                loss_curve_image(result.spatial_losses, title="spatial loss"),
                loss_curve_image(result.temporal_losses, title="temporal loss"))


def _loras(value, name: str) -> list[L.LoRAWeights]:
    items = list(value) if isinstance(value, tuple | list) else [value]
    if not items or any(item is None for item in items):
        raise ValueError(f"{name} is empty: that path was not trained (see SpatialTemporalLoRATrain's paths)")
    if not all(isinstance(item, L.LoRAWeights) for item in items):
        raise TypeError(f"{name} must be a VIDEO_LORA from SpatialTemporalLoRATrain")
    return items


class SaveVideoLoRA:
    """Save LoRAs where the ecosystem finds them: temporal -> animatediff_motion_lora, spatial -> loras."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "save"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("paths",)
    OUTPUT_TOOLTIPS = ("Written files, relative to their models folder (one line each).",)
    OUTPUT_NODE = True
    DESCRIPTION = ("Temporal LoRAs on the AnimateDiff base are AnimateDiff motion LoRAs (AnimateDiff-Evolved's Load "
                   "AnimateDiff LoRA reads them); spatial LoRAs are kohya-layout SD1.5 LoRAs (core Load LoRA reads "
                   "them). Safetensors with metadata; a counter is appended, nothing is overwritten.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": (VIDEO_LORA, {"tooltip": "temporal_lora or spatial_loras from SpatialTemporalLoRATrain."}),
            "filename_prefix": ("STRING", {"default": "motion_director/motion",
                                           "tooltip": "Name inside models/animatediff_motion_lora (temporal) or "
                                                      "models/loras (spatial)."}),
        }}

    def save(self, lora, filename_prefix):
        written = []
        items = _loras(lora, "lora")
        for i, item in enumerate(items):
            folder = host.LORA_FOLDER if item.kind == "spatial" else host.MOTION_LORA_FOLDER
            path = save_path(filename_prefix, folder, f"_{item.kind}_v{i}" if len(items) > 1 else f"_{item.kind}")
            L.save_lora(item, path)
            written.append(path.relative_to(host.model_dir(folder)).as_posix())
            logger.info("saved %s LoRA %s", item.kind, written[-1])
        return ("\n".join(written),)


class ApplyVideoLoRA:
    """Bake a VIDEO_LORA into a VIDEO_UNET at a strength (e.g. a motion on an untrained AnimateDiff UNet)."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "apply"
    RETURN_TYPES = (VIDEO_UNET,)
    RETURN_NAMES = ("video_unet",)
    OUTPUT_TOOLTIPS = ("A new VIDEO_UNET with the LoRA(s) baked in; the input is unchanged.",)
    DESCRIPTION = "Separate strengths for motion and appearance: chain one Apply per LoRA."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The VIDEO_UNET the LoRA was trained for (same base kind)."}),
            "lora": (VIDEO_LORA, {"tooltip": "A temporal or spatial LoRA (a list: each is applied)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "Scale of the LoRA's weight change."}),
        }}

    def apply(self, video_unet, lora, strength):
        return (L.merge_all(video_unet, [(item, strength, f"{item.kind} LoRA") for item in _loras(lora, "lora")]),)


class LoadVideoLoRA:
    """Load a saved motion LoRA (animatediff_motion_lora) or spatial LoRA (loras) into a VIDEO_UNET."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO_UNET,)
    RETURN_NAMES = ("video_unet",)
    OUTPUT_TOOLTIPS = ("A new VIDEO_UNET with the LoRA baked in at the strength.",)
    DESCRIPTION = ("Motion LoRAs: AnimateDiff MotionLoRA layout (ours, AnimateDiff's official ones, "
                   "ADMotionDirector's). Spatial LoRAs: kohya diffusers-name layout (ours).")

    @classmethod
    def INPUT_TYPES(cls):
        names = ([f"motion/{n}" for n in host.list_models(host.MOTION_LORA_FOLDER)]
                 + [f"spatial/{n}" for n in host.list_models(host.LORA_FOLDER)])
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The VIDEO_UNET to apply the LoRA to."}),
            "lora_name": (names, {"tooltip": "motion/...: models/animatediff_motion_lora; spatial/...: "
                                             "models/loras."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "Scale of the LoRA's weight change."}),
        }}

    def load(self, video_unet, lora_name, strength):
        group, _, name = lora_name.partition("/")
        if group not in ("motion", "spatial") or not name:
            raise ValueError(f"lora_name {lora_name!r} must start with 'motion/' or 'spatial/'")
        folder = host.MOTION_LORA_FOLDER if group == "motion" else host.LORA_FOLDER
        kind = "temporal" if group == "motion" else "spatial"
        lora = L.load_lora(host.model_path(name, folder), video_unet.network, kind)
        return (L.merge(video_unet, lora, strength, name),)


class MotionNoisePrior:
    """MotionDirector's noise prior: mix inverted reference noise with fresh noise (variance preserving)."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "mix"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("sqrt(p) * inverted + sqrt(1 - p) * fresh noise, tagged so SampleVideo starts from it.",)
    DESCRIPTION = ("MotionDirector_inference.py: z_T = sqrt(noise_prior) z_inv + sqrt(1 - noise_prior) eps. 0: fresh "
                   "noise only; 1: the inverted noise (Tune-A-Video style).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "noise": ("LATENT", {"tooltip": "Inverted reference latents from DDIMInvertVideo."}),
            "noise_prior": ("FLOAT", {"default": NOISE_PRIOR, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": f"Weight p of the inverted noise (MotionDirector configs: "
                                                 f"{NOISE_PRIOR} for one video, 0 for several; its README also uses "
                                                 f"0.3)."}),
            "seed": seed_input(0, "Seed of the fresh noise."),
        }}

    def mix(self, noise, noise_prior, seed):
        tag = noise.get(INVERTED_KEY)
        if tag is None:
            raise ValueError("noise must come from DDIMInvertVideo (inverted latents); for fresh noise only, give "
                             "SampleVideo an Empty Latent Image")
        z_inv = latent_to_video(noise, 1.0, "noise")
        mixed = md.noise_prior(z_inv, noise_prior, generator=torch.Generator().manual_seed(seed))
        return (video_to_latent(mixed, 1.0, **{INVERTED_KEY: dict(tag, noise_prior=noise_prior)}),)
