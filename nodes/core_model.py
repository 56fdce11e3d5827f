"""VideoUNetAsModel and InvertedNoiseSigmas: a VIDEO_UNET in ComfyUI's own sampling (KSampler, SamplerCustom, any
sampler and scheduler, ControlNet).

``VideoUNetAsModel`` returns a clone of the MODEL whose ``diffusion_model`` is a :class:`VideoDiffusionModel` (a
ComfyUI object patch: installed when ComfyUI loads the clone, undone when it unloads it). ComfyUI's BaseModel keeps
doing what it does for any SD model around that call (the eps/v parameterisation and noise schedule of the MODEL,
cfg, area/mask conditioning, ControlNet); only the network call runs the video UNet, one clip per video.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..modules.defaults import TAV
from ..modules.networks.base import ControlResiduals
from ..modules.networks.frame_batch import run_frame_batch, video_frames
from ..modules.sampling.sigmas import FINALS, SPACINGS, sampler_sigmas, to_sigma_space
from ..modules.sampling.windows import ContextWindows, windowed
from . import host
from .boundary import INVERTED_KEY, VIDEO_UNET, model_schedule, weight_patches_id
from .windows import check_context, context_input

logger = logging.getLogger(__name__)

_CONTROL_KEYS = ("input", "middle", "output")


def down_residual_count(config) -> int:
    """How many skip connections a diffusers UNet config has (12 for SD1.x/SD2.x): the stem's output, then each down
    block's resnets and, on all but the last block, its downsampler."""
    blocks = len(config.down_block_types)
    layers = config.layers_per_block
    layers = [layers] * blocks if isinstance(layers, int) else list(layers)
    return 1 + sum(n + (i < blocks - 1) for i, n in enumerate(layers))


def control_residuals(control, count: int, dtype: torch.dtype) -> ControlResiduals | None:
    """ComfyUI's ``control`` dict -> :class:`ControlResiduals` (None when it adds nothing).

    ComfyUI's UNet adds ``control["middle"][-1]`` after the middle block and pops ``control["output"]`` from the end
    onto the skip connections as the decoder consumes them, so ``output[i]`` is the residual of skip ``i`` (a
    shorter list covers the last skips); ``control["input"]`` (T2I-Adapter) is added *inside* the encoder, which the
    video UNet does not offer: refused.
    """
    if not control:
        return None
    unknown = sorted(k for k, v in control.items() if k not in _CONTROL_KEYS and v)
    if unknown:
        raise ValueError(f"control carries {unknown}, which the video UNet cannot add; only ControlNet residuals "
                         f"(middle/output) are supported")
    if any(r is not None for r in control.get("input") or []):
        raise ValueError("a T2I-Adapter (control 'input' residuals, added inside the encoder) is not supported by "
                         "the video UNet; use a ControlNet (Apply ControlNet) instead")
    output, middle = list(control.get("output") or []), list(control.get("middle") or [])
    if all(r is None for r in output + middle):
        return None
    if len(output) > count:
        raise ValueError(f"the ControlNet gives {len(output)} skip residuals but this UNet has {count} skip "
                         f"connections (a ControlNet for another model family?)")
    zero = torch.zeros((), dtype=dtype)
    down = [zero] * (count - len(output)) + [zero if r is None else r.to(dtype) for r in output]
    mid = zero if not middle or middle[-1] is None else middle[-1].to(dtype)
    return ControlResiduals(tuple(down), mid)


def check_transformer_options(options: dict) -> None:
    """Refuse what other nodes put in ``transformer_options`` to change the 2D UNet's layers (GLIGEN's middle patch,
    attention patches and replacements, FreeU's block patches): the video UNet does not run those layers."""
    for key in ("patches", "patches_replace"):
        used = sorted(k for k, v in (options.get(key) or {}).items() if v)
        if used:
            raise ValueError(f"the MODEL carries {key} {used} (from GLIGEN, an attention/block patch node or another "
                             f"custom node); they patch the 2D UNet's layers, which the video UNet does not run. "
                             f"Remove those nodes from this MODEL's path")


class VideoDiffusionModel(nn.Module):
    """What ComfyUI's BaseModel calls as ``diffusion_model``: ``forward(x [B,c,h,w], timesteps [B], context [B,n,d],
    y, control, transformer_options)`` -> the video UNet's prediction ``[B,c,h,w]``, each video as one clip.

    ``network`` is a clone of the VIDEO_UNET's (its own ``Parameter`` objects over the same storage), so ComfyUI
    may move it without touching the VIDEO_UNET. :meth:`park` returns every moved tensor to the storage it was
    shared from (no second CPU copy of the weights after ComfyUI offloads it).
    """

    def __init__(self, network: nn.Module, frames_per_video: int = 0, windows: ContextWindows | None = None):
        super().__init__()
        self.network = network
        self.frames_per_video = int(frames_per_video)
        self.windows = windows
        self.skip_count = down_residual_count(network.config)
        self._homes = {name: p.data for name, p in network.named_parameters()}

    @property
    def dtype(self) -> torch.dtype:
        return self.network.dtype

    def park(self) -> None:
        """Point every parameter ComfyUI moved back at the tensor it shared with the VIDEO_UNET."""
        for name, p in self.network.named_parameters():
            home = self._homes.get(name)
            if home is not None and p.data is not home:
                p.data = home

    def _on(self, device: torch.device) -> None:
        """ComfyUI loads this module like any model; when it could not (partial loading, a clone of the same
        BaseModel still counted as loaded), move it here rather than fail."""
        if self.network.device != device:
            logger.info("VideoUNetAsModel: loading the video UNet to %s", device)
            self.network.to(device)

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        options = transformer_options or {}
        extra = sorted(k for k, v in kwargs.items() if v is not None)
        if extra or y is not None:
            raise ValueError(f"the conditioning carries {extra or ['y']} for the 2D model (another model family's "
                             f"inputs?); the video UNet takes text conditioning (and ControlNet) only")
        check_transformer_options(options)
        expected = self.network.config.in_channels
        if x.shape[1] != expected:
            raise ValueError(f"the latent has {x.shape[1]} channels but the video UNet takes {expected} (an "
                             f"inpainting model's concat conditioning is not supported)")
        if context is None or context.shape[-1] != self.network.config.cross_attention_dim:
            raise ValueError(f"conditioning width {None if context is None else context.shape[-1]} does not match the "
                             f"video UNet's {self.network.config.cross_attention_dim}")
        self._on(x.device)
        dtype = self.dtype
        residuals = control_residuals(control, self.skip_count, dtype)
        frames = video_frames(x.shape[0], len(options.get("cond_or_uncond") or [0]), self.frames_per_video)
        return run_frame_batch(self._clip_fn(dtype), x, timesteps, context, frames, residuals)

    def _clip_fn(self, dtype: torch.dtype):
        """``clip(videos, t, context, residuals)``: the network on whole clips, or window by window (issue 18's
        context windows, each window's residuals picked from its frames, an interrupt honoured between windows)."""
        network = self.network

        def clip(videos, t, ctx, res):
            if self.windows is None:
                return network(videos.to(dtype), t, ctx.to(dtype), residuals=res)
            frames = videos.shape[2]
            current = {}

            def on_window(window):
                host.check_interrupt()
                current["frames"] = window.frames

            def model(xw, tw, cw):
                part = None if res is None else res.select_frames(current["frames"], frames)
                return network(xw.to(dtype), tw, cw.to(dtype), residuals=part)

            return windowed(model, self.windows, network.max_frames, on_window)(videos, t, ctx)

        return clip


def _refuse_weight_hooks(hooks) -> None:
    if getattr(hooks, "hooks", None):
        raise ValueError("the conditioning carries weight hooks (scheduled LoRA/model hooks); they patch the 2D "
                         "UNet's weights, which VideoUNetAsModel does not run. Apply LoRAs before building the "
                         "VIDEO_UNET, or with ApplyVideoLoRA")


class VideoUNetAsModel:
    """A VIDEO_UNET as a MODEL for core samplers."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the MODEL that runs the video UNet: KSampler, SamplerCustom and ControlNet work "
                       "with it; frames are the latent's batch.",)
    DESCRIPTION = ("Use a tuned (or untuned) VIDEO_UNET in ComfyUI's own samplers. The MODEL supplies sampling "
                   "(eps/v, noise schedule, latent format); its 2D UNet is not run. Core batches cond and uncond; "
                   "each video is denoised as one clip. Start from DDIMInvertVideo's noise with InvertedNoiseSigmas.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL the VIDEO_UNET was built from (its sampling and latent format "
                                           "are used)."}),
            "video_unet": (VIDEO_UNET, {"tooltip": "The (tuned) VIDEO_UNET to sample with."}),
            "frames_per_video": ("INT", {"default": 0, "min": 0, "max": 4096,
                                         "tooltip": "Frames of one video in the latent batch; 0: the whole latent "
                                                    "is one video. Set it when a latent holds several videos "
                                                    "back to back."}),
        }, "optional": {"context": context_input()}}

    def run(self, model, video_unet, frames_per_video, context=None):
        patches = weight_patches_id(model)
        if patches and patches != video_unet.source_patches:
            raise ValueError("model carries weight patches (e.g. a LoRA) that this VIDEO_UNET was not built with; "
                             "the video UNet runs the weights baked into the VIDEO_UNET, so they would be dropped. "
                             "Connect the MODEL the VIDEO_UNET was made from, or apply the LoRA before "
                             "InflateUNetTemporal (spatial) / with ApplyVideoLoRA (motion)")
        schedule = model_schedule(model)
        if schedule.prediction_type != video_unet.schedule.prediction_type:
            raise ValueError(f"model predicts {schedule.prediction_type} but the VIDEO_UNET was built from a "
                             f"{video_unet.schedule.prediction_type} model; connect the MODEL it was built from")
        width = getattr(getattr(model.model, "model_config", None), "unet_config", {}).get("context_dim")
        if width is not None and width != video_unet.network.config.cross_attention_dim:
            raise ValueError(f"model takes {width}-dim text conditioning but the VIDEO_UNET "
                             f"{video_unet.network.config.cross_attention_dim}; connect the MODEL it was built from")
        windows = check_context(context, video_unet, frames_per_video or None)
        module = VideoDiffusionModel(video_unet.network.clone(), frames_per_video, windows)
        return (host.video_model_patcher(model, module, module.park, _refuse_weight_hooks),)


class InvertedNoiseSigmas:
    """DDIM-inverted noise as the start of a core sampler: sigmas + the noise in core's sigma space."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "run"
    RETURN_TYPES = ("SIGMAS", "LATENT")
    RETURN_NAMES = ("sigmas", "latent")
    OUTPUT_TOOLTIPS = (
        "Sigmas from the inversion's noise level down, for SamplerCustom / SamplerCustomAdvanced.",
        "The inverted noise scaled into core's sigma space (x * sqrt(1 + sigma^2)); sample it with add_noise off.")
    DESCRIPTION = ("Start a core sampler (SamplerCustom, add_noise off) from DDIMInvertVideo's noise. 'ddim' spacing "
                   "with end 'alpha_0' and the ddim or euler sampler reproduces SampleVideo; 'karras' gives any step "
                   "count for DPM++ and friends from the same start.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL you sample with (its noise schedule)."}),
            "noise": ("LATENT", {"tooltip": "Inverted noise from DDIMInvertVideo."}),
            "spacing": (list(SPACINGS), {"default": "ddim", "tooltip": "ddim: the inversion's own timesteps (equals "
                                                                      "SampleVideo with ddim/euler); karras: "
                                                                      "Karras spacing over 'steps' moves."}),
            "end": (["alpha_0", "zero"], {"default": "alpha_0",
                                          "tooltip": "alpha_0: stop at sigma_min like SampleVideo's DDIM; zero: end "
                                                     "at sigma 0 like KSampler's schedulers."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                              "tooltip": "Moves of the sampler; 0: as many as the inversion's steps (required "
                                         f"for ddim spacing; Tune-A-Video: {TAV.num_inference_steps})."}),
        }}

    def run(self, model, noise, spacing, end, steps):
        tag = noise.get(INVERTED_KEY) if isinstance(noise, dict) else None
        if not tag or "steps" not in tag:
            raise ValueError("noise must be a LATENT from DDIMInvertVideo (it records the inversion's steps, which "
                             "fix the noise level)")
        final = {"alpha_0": FINALS[0], "zero": FINALS[1]}[end]
        sigmas = sampler_sigmas(model_schedule(model), int(tag["steps"]), spacing, final, moves=steps or None)
        out = {k: v for k, v in noise.items() if k != INVERTED_KEY}
        out["samples"] = to_sigma_space(noise["samples"].float(), float(sigmas[0]))
        return (sigmas, out)
