"""Evaluation nodes: LoadCLIPScoreModel and CLIPVideoScore (Tune-A-Video Sec. 5 automatic metrics)."""

from __future__ import annotations

import math

import torch

from ..modules.evaluation.charts import video_chart
from ..modules.evaluation.clip_files import load_clip_model
from ..modules.evaluation.clip_score import CLIP_EVAL, resize_crop, score_video, truncation_note
from . import host

CLIP_SCORE_MODEL = "CLIP_SCORE_MODEL"


class LoadCLIPScoreModel:
    """Load a CLIP with both towers (the papers use ViT-L/14) from models/clip_vision, for text alignment."""

    CATEGORY = "TuneVideo/evaluate"
    FUNCTION = "run"
    RETURN_TYPES = (CLIP_SCORE_MODEL,)
    RETURN_NAMES = ("clip_model",)
    OUTPUT_TOOLTIPS = ("A CLIP for CLIP Video Score: image and text towers with their projections.",)
    DESCRIPTION = ("Loads a CLIP from models/clip_vision: a transformers folder (config.json, model.safetensors, "
                   "vocab.json, merges.txt; e.g. openai/clip-vit-large-patch14) or a single .safetensors in "
                   "transformers or OpenAI key layout (tokenizer: beside it, else ComfyUI's sd1_tokenizer). "
                   "Pickles are never loaded, nothing is downloaded.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (host.list_clip_models(), {"tooltip": "A CLIP folder or .safetensors file under "
                                                           "models/clip_vision (paper setting: ViT-L/14)."}),
        }}

    def run(self, model):
        clip = load_clip_model(host.clip_model_path(model), tokenizer_dir=host.comfy_tokenizer_dir())
        return (clip,)


class CLIPVideoScore:
    """Frame consistency, text alignment and source similarity of an edited video, with a per-frame chart."""

    CATEGORY = "TuneVideo/evaluate"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "IMAGE")
    RETURN_NAMES = ("frame_consistency", "text_alignment", "source_similarity", "chart")
    OUTPUT_TOOLTIPS = (
        "Mean CLIP image-embedding cosine over all pairs of frames (1 = a still video; papers print x 100).",
        "Mean CLIP score (100 x cosine) of every frame with the prompt; NaN without a clip_model.",
        "Mean cosine of each edited frame with its source frame; NaN without source_frames.",
        "Per-frame CLIP score and consecutive-frame (and source) similarity over time; the lowest points marked.")
    DESCRIPTION = ("The automatic metrics of Tune-A-Video (Sec. 5) and the papers after it. clip_model scores text "
                   "alignment (its own image and text towers); frame consistency and source similarity use "
                   "clip_vision when connected, else clip_model. CLIP preprocessing: shortest side to 224 bicubic, "
                   "centre crop, CLIP mean/std.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "The edited video's frames (VAE Decode output or a loaded video)."}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "The edited prompt (required with clip_model; ignored when only "
                                                 "clip_vision is connected)."}),
            },
            "optional": {
                "clip_model": (CLIP_SCORE_MODEL, {"tooltip": "From Load CLIP Score Model: needed for text "
                                                             "alignment (and scores everything when alone)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "From core Load CLIP Vision: used for frame consistency "
                                                           "and source similarity when connected."}),
                "source_frames": ("IMAGE", {"tooltip": "The source clip as it was edited (same frame count): adds "
                                                       "source similarity."}),
            },
        }

    def run(self, frames, prompt, clip_model=None, clip_vision=None, source_frames=None):
        encoder = clip_vision_encoder(clip_vision) if clip_vision is not None else None
        host.check_interrupt()
        score = score_video(clip_model, frames, prompt if clip_model is not None else None, source_frames,
                            device=host.torch_device(), image_encoder=encoder)
        nan = float("nan")
        text = score.text_alignment if score.text_alignment is not None else nan
        source = score.source_similarity if score.source_similarity is not None else nan
        ui = {"clip_scores": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                               for k, v in score.as_dict().items()}]}
        note = truncation_note(clip_model, prompt) if getattr(clip_model, "tokenizer", None) else None
        if note:
            ui["text"] = [note]
        return {"ui": ui, "result": (score.frame_consistency, text, source, video_chart(score))}


def clip_vision_encoder(clip_vision):
    """A core ``CLIP_VISION`` -> ``frames [F, H, W, C] -> image_embeds [F, P]``.

    Frames get CLIP's resize and centre crop to the model's ``image_size`` here; ComfyUI's ``clip_preprocess``
    (comfy/clip_vision.py) then skips its own resize (the frames are already ``size x size``) and applies only its
    8-bit rounding and the model's mean/std, so both paths preprocess identically.
    """
    if not callable(getattr(clip_vision, "encode_image", None)):
        raise ValueError(f"clip_vision must be a CLIP_VISION from Load CLIP Vision, got {type(clip_vision).__name__}")
    size = int(getattr(clip_vision, "image_size", CLIP_EVAL.image_size))

    def encode(frames: torch.Tensor) -> torch.Tensor:
        pixels = resize_crop(frames, size)
        out = []
        for chunk in pixels.split(CLIP_EVAL.batch_size):
            host.check_interrupt()
            embeds = clip_vision.encode_image(chunk)["image_embeds"]
            if embeds is None or embeds.dim() != 2:
                raise ValueError("clip_vision gave no projected image embeddings (image_embeds); use a CLIP vision "
                                 "model with a visual projection")
            out.append(embeds.float().cpu())
        return torch.cat(out)

    return encode
