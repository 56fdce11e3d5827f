"""OneShotTune: tune an inflated UNet on one video (Tune-A-Video Sec. 4.2)."""

from __future__ import annotations

from ..modules.defaults import TAV
from ..modules.files.plot import loss_curve_image
from ..modules.methods.dreamix import DREAMIX_PRESETS
from ..modules.methods.tune_a_video import TUNE_A_VIDEO_PRESETS, tune_a_video
from ..modules.training.memory import GIB, check_fits, tune_estimate
from ..modules.training.trainable import parse_patterns
from ..modules.training.tune import PRECISIONS, TuneConfig
from . import host
from .boundary import VIDEO_UNET, conditioning_tensor, latent_to_video, parked
from .common import seed_input
from .windows import training_context_input

#: The trainable presets both tuning nodes offer (Tune-A-Video's, then Dreamix's).
PRESETS = {**TUNE_A_VIDEO_PRESETS, **DREAMIX_PRESETS}


class TuningNode:
    """What the nodes that tune a whole VIDEO_UNET on one clip share (OneShotTune, DreamixFinetune): their place in
    the menu, their outputs, and the inputs whose meaning does not depend on the method."""

    CATEGORY = "TuneVideo/train"
    FUNCTION = "run"
    RETURN_TYPES = (VIDEO_UNET, "IMAGE")
    RETURN_NAMES = ("video_unet", "loss_curve")

    @staticmethod
    def checkpointing_input(default: bool) -> tuple:
        return ("BOOLEAN", {"default": default, "tooltip": "Recompute activations in backward: less memory, about "
                                                           "30% slower."})

    @staticmethod
    def precision_input(tooltip: str = "auto: bf16 autocast on GPU, fp32 on CPU.") -> tuple:
        return (list(PRECISIONS), {"default": "auto", "tooltip": tooltip})


class OneShotTune(TuningNode):
    """Fine-tune chosen projections of a VIDEO_UNET on the source clip with the denoising loss."""

    OUTPUT_TOOLTIPS = ("A new tuned VIDEO_UNET (the input is left unchanged).", "Loss per step, as an image.")
    DESCRIPTION = "Tune-A-Video one-shot tuning: only attn1.to_q, attn2.to_q and attn_temp learn by default."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "Inflated UNet from InflateUNetTemporal (or a loaded delta)."}),
            "latent": ("LATENT", {"tooltip": "Source video latents: frames as batch, from VAE Encode of the clip."}),
            "positive": ("CONDITIONING", {"tooltip": "Source prompt describing the original video."}),
            "steps": ("INT", {"default": TAV.max_train_steps, "min": 1, "max": 100000,
                              "tooltip": "Optimisation steps (Tune-A-Video: 500)."}),
            "learning_rate": ("FLOAT", {"default": TAV.learning_rate, "min": 1e-7, "max": 1e-2, "step": 1e-6,
                                        "round": False, "tooltip": "AdamW learning rate (Tune-A-Video: 3e-5)."}),
            "seed": seed_input(TAV.seed, "Seed for the training noise and timesteps. Its control starts 'fixed' "
                                         "(web/tunevideo.js): a new seed re-tunes the whole model on the next "
                                         "Queue."),
            "trainable": (list(PRESETS) + ["custom"], {"default": "tune-a-video",
                          "tooltip": "tune-a-video: attn1.to_q, attn2.to_q and attn_temp in every transformer block "
                                     "(the paper). tune-a-video-reference: the same in the mid and up blocks only, "
                                     "which is what the official code effectively trains (its re-entrant gradient "
                                     "checkpointing gives the down blocks no gradient); faster. custom: the "
                                     "patterns below."}),
            "custom_patterns": ("STRING", {"default": "attn1.to_q, attn2.to_q, attn_temp", "multiline": True,
                                           "tooltip": "Module-name suffixes or globs (comma/newline separated); "
                                                      "used when trainable is 'custom'."}),
            "batch_size": ("INT", {"default": TAV.train_batch_size, "min": 1, "max": 16,
                                   "tooltip": "Copies of the clip per step, each with its own noise and timestep."}),
            "gradient_checkpointing": cls.checkpointing_input(TAV.gradient_checkpointing),
            "mixed_precision": cls.precision_input("auto: bf16 autocast on GPU, fp32 on CPU. Trained weights keep an "
                                                   "fp32 master copy."),
        }, "optional": {
            "prompt_note": ("STRING", {"default": "", "tooltip": "Source prompt text, stored in saved weights' "
                                                                 "metadata (CONDITIONING carries no text)."}),
            "force_memory": FORCE_MEMORY,
            "context": training_context_input(),
        }}

    def run(self, video_unet, latent, positive, steps, learning_rate, seed, trainable, custom_patterns, batch_size,
            gradient_checkpointing, mixed_precision, prompt_note="", force_memory=False, context=None):
        patterns = parse_patterns(custom_patterns if trainable == "custom" else trainable, PRESETS)
        config = TuneConfig(steps=steps, learning_rate=learning_rate, batch_size=batch_size, trainable=patterns,
                            seed=seed, gradient_checkpointing=gradient_checkpointing,
                            mixed_precision=mixed_precision, windows=context)
        return run_tuning(video_unet, latent, positive, config, "OneShotTune", prompt_note, force_memory)


#: The training nodes' optional input: start even when the memory estimate says the run does not fit.
FORCE_MEMORY = ("BOOLEAN", {"default": False, "tooltip": "Start training even when the memory estimate (printed in "
                                                         "the console and on the loss curve) exceeds the free "
                                                         "memory. Off: such a run is refused before it starts."})


def run_tuning(video_unet, latent, positive, config: TuneConfig, label: str, prompt_note: str = "",
               force_memory: bool = False, method=None):
    """The tuning nodes' shared boundary: LATENT + one-prompt CONDITIONING in, the memory check, the method's tuning
    entry point (``method(video_unet, latents, context, config, callback, device, prompt)``) with progress and
    interrupt, the tuned VIDEO_UNET parked off the accelerator, the loss curve as an IMAGE. ``method``: the
    engine's entry point (None: Tune-A-Video's)."""
    method = method or tune_a_video
    latents = latent_to_video(latent, video_unet.latent_scale, "latent")
    context = conditioning_tensor(positive, "positive", video_unet)
    host.free_accelerator()
    device = host.torch_device()
    est = tune_estimate(video_unet.network, latents.shape, config, device)
    check_fits(est, device, force_memory, label)
    tuned, curve = method(video_unet, latents, context, config, callback=host.Progress(config.steps, label),
                          device=device, prompt=prompt_note)
    return (parked(tuned), loss_curve_image(curve, title=f"{label} loss (memory est. {est.total / GIB:.1f} GiB)"))
