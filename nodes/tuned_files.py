"""Saving and loading tuned VIDEO_UNET deltas in ComfyUI's models/tunevideo folder."""

from __future__ import annotations

import logging

from ..modules.deltas import load_delta, save_delta
from . import host
from .boundary import VIDEO_UNET
from .common import save_path

logger = logging.getLogger(__name__)


class SaveTunedVideoUNet:
    """Write the tuned and added tensors as a small safetensors delta (Tune-A-Video key names)."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "save"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the delta was written, relative to models/tunevideo (it appears in Load Tuned Video "
                       "UNet's list; connect a Preview Any node to see it in the graph).",)
    OUTPUT_NODE = True
    DESCRIPTION = "Saves only attn_temp/norm_temp and tuned tensors, with method, base hash and prompt metadata."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The tuned VIDEO_UNET to save."}),
            "filename_prefix": ("STRING", {"default": "tune_a_video/edit",
                                           "tooltip": "Name inside models/tunevideo; a counter is appended so "
                                                      "nothing is overwritten."}),
        }}

    def save(self, video_unet, filename_prefix):
        path = save_path(filename_prefix, host.MODEL_FOLDER)
        meta = save_delta(video_unet, path)
        rel = path.relative_to(host.model_dir()).as_posix()
        logger.info("saved %s (%s, base %s)", rel, meta["method"], meta["base_model_hash"])
        return (rel,)


class LoadTunedVideoUNet:
    """Apply a saved delta (or an official Tune-A-Video UNet checkpoint) to an inflated base."""

    CATEGORY = "TuneVideo/model"
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO_UNET,)
    RETURN_NAMES = ("video_unet",)
    OUTPUT_TOOLTIPS = ("The base VIDEO_UNET with the saved weights applied (a new object).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The inflated base model the weights were tuned from."}),
            "weights": (host.list_models(), {"tooltip": "A .safetensors file in models/tunevideo."}),
            "check_base": ("BOOLEAN", {"default": True,
                                       "tooltip": "Refuse weights tuned from another base model."}),
        }}

    def load(self, video_unet, weights, check_base):
        return (load_delta(video_unet, host.model_path(weights), check_base=check_base),)
