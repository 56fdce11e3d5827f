"""AnimateDiffVideoUNet: ComfyUI MODEL + AnimateDiff motion module -> VIDEO_UNET (the AnimateDiff video base)."""

from __future__ import annotations

from ..modules.build import video_model_with_motion
from ..modules.networks.animatediff import read_motion_module
from . import host
from .boundary import VIDEO_UNET, video_unet_from_model


class AnimateDiffVideoUNet:
    """Combine an SD1.5 MODEL with an AnimateDiff motion module into a video UNet every TuneVideo node accepts."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "build"
    RETURN_TYPES = (VIDEO_UNET,)
    RETURN_NAMES = ("video_unet",)
    OUTPUT_TOOLTIPS = ("The AnimateDiff video UNet (motion module + the MODEL's 2D weights, shared) with the MODEL's "
                       "noise schedule and latent scale.",)
    DESCRIPTION = ("AnimateDiff base (Guo et al. 2023): the MODEL's image UNet with a motion module after every "
                   "block. Takes SD1.5 modules v1, v2 and v3 (mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt, ...) from "
                   "models/animatediff_models (shared with AnimateDiff-Evolved) or models/tunevideo/motion_modules. "
                   ".ckpt files are read as plain weights only (torch.load weights_only).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.5 model (e.g. from Load Checkpoint). LoRAs applied to it are "
                                           "baked in."}),
            "motion_module": (host.list_models(host.MOTION_MODULE_FOLDER),
                              {"tooltip": "AnimateDiff SD1.5 motion module (v1/v2/v3), .safetensors or .ckpt."}),
        }}

    def build(self, model, motion_module):
        def build(parts):
            motion = read_motion_module(host.model_path(motion_module, host.MOTION_MODULE_FOLDER))
            return video_model_with_motion(parts.state_dict, parts.unet_config, parts.schedule, motion, motion_module,
                                           parts.latent_scale, dtype=parts.dtype)

        return (video_unet_from_model(model, build),)
