"""InflateUNetTemporal: ComfyUI MODEL -> VIDEO_UNET (Tune-A-Video network inflation)."""

from __future__ import annotations

from ..modules.build import video_model_from_ldm
from ..modules.defaults import EI2
from ..modules.networks.inflate import ATTENTION_VARIANTS, TEMPORAL_VARIANTS, variant_options
from .boundary import VIDEO_UNET, video_unet_from_model


class InflateUNetTemporal:
    """Turn an SD1.x/SD2.x MODEL into a space-time video UNet (sparse-causal + temporal attention)."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "inflate"
    RETURN_TYPES = (VIDEO_UNET,)
    RETURN_NAMES = ("video_unet",)
    OUTPUT_TOOLTIPS = ("The inflated UNet with its noise schedule and latent scale; 2D weights shared with MODEL.",)
    DESCRIPTION = ("Tune-A-Video inflation: self-attention becomes sparse-causal (first + previous frame), every "
                   "transformer block gains zero-initialised temporal attention. Untuned, one frame equals the image "
                   "model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x or SD2.x model (e.g. from Load Checkpoint). LoRAs applied to it "
                                           "are baked in. SDXL, SD3, Flux and video models are not supported."}),
        }, "optional": {
            "attention": (list(ATTENTION_VARIANTS), {"default": "tune-a-video",
                          "tooltip": "Spatial self-attention across frames. tune-a-video: each frame attends to "
                                     "the first and the previous frame (sparse-causal). video-p2p: each frame "
                                     "attends to the first frame only (Video-P2P). ei2-ffam: each patch attends "
                                     "to its own frame's patches and to pooled patches of every other frame "
                                     "(EI² FFAM). Saved deltas record it and reload with it."}),
            "temporal_layer": (list(TEMPORAL_VARIANTS), {"default": "tune-a-video",
                               "tooltip": "Temporal layer added to every transformer block. tune-a-video: LayerNorm "
                                          "+ temporal attention. ei2-stam: EI²'s shift-restricted temporal "
                                          "attention (Instance Centering + normalised mapping), which moves the "
                                          "features' statistics less when tuned. Saved deltas record it."}),
            "fine_coarse_pool": ("INT", {"default": EI2.ffam_pool_size, "min": 1, "max": 64,
                                         "tooltip": "ei2-ffam only: side of the square of patches averaged into "
                                                    "one coarse patch of the other frames. Must divide the "
                                                    "latent's size at every UNet level (4 fits 512x512)."}),
        }}

    def inflate(self, model, attention="tune-a-video", temporal_layer="tune-a-video",
                fine_coarse_pool=EI2.ffam_pool_size):
        options = variant_options(attention, pool_size=fine_coarse_pool)
        video_unet = video_unet_from_model(model, lambda parts: video_model_from_ldm(
            parts.state_dict, parts.unet_config, parts.schedule, parts.latent_scale, dtype=parts.dtype,
            attention=attention, attention_options=options, temporal=temporal_layer))
        return (video_unet,)
