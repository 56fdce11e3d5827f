"""Video-P2P nodes: NullTextInvertVideo and VideoP2PEdit (Liu et al., 2023; prompt-to-prompt control)."""

from __future__ import annotations

import logging

from ..modules.defaults import VP2P
from ..modules.finite import finite_number
from ..modules.methods.video_p2p.control import attention_image
from ..modules.methods.video_p2p.edit import edit_control, p2p_sample
from ..modules.methods.video_p2p.null_text import NullTextConfig, null_text_invert_video
from . import host
from .boundary import VIDEO_UNET, check_tuned_frames, clip_prompt, clip_tokenizer, latent_to_video, video_to_latent
from .windows import VIDEO_CONTEXT, check_context, context_input, denoising_progress

logger = logging.getLogger(__name__)

NULL_TEXT_KEY = "tunevideo_null_text"
NT = NullTextConfig()
#: Largest attention multiplier a reweight entry may give: prompt-to-prompt uses single digits; far larger values
#: overflow the attention output (1e30 gives an all-NaN edit).
REWEIGHT_LIMIT = 100.0


class NullTextInvertVideo:
    """DDIM-invert the source clip with its prompt, then optimise one unconditional embedding per step."""

    CATEGORY = "TuneVideo/video-p2p"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("inverted",)
    OUTPUT_TOOLTIPS = ("Inverted noise, carrying the per-step null-text embeddings and the source prompt for "
                       "Video-P2P Edit.",)
    DESCRIPTION = (f"Null-text inversion (Mokady et al. 2023) as Video-P2P runs it: Adam per step, lr "
                   f"{NT.learning_rate:g} (1 - i/100), up to {NT.inner_steps} updates with early stop, guidance "
                   f"{NT.cfg:g}. fast skips the optimisation.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The tuned VIDEO_UNET (Video-P2P: inflate with attention "
                                                   "video-p2p)."}),
            "latent": ("LATENT", {"tooltip": "Source video latents (frames as batch), from VAE Encode."}),
            "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP: encodes the source prompt and the empty prompt."}),
            "source_prompt": ("STRING", {"default": VP2P.source_prompt, "multiline": True,
                                         "tooltip": "Prompt describing the source video (plain text, at most 75 "
                                                    "tokens); the edit node reuses it."}),
            "steps": ("INT", {"default": VP2P.steps, "min": 1, "max": 1000,
                              "tooltip": f"DDIM steps (Video-P2P: {VP2P.steps}); the edit samples with the same "
                                         f"number."}),
            "fast": ("BOOLEAN", {"default": False, "tooltip": "Skip the null-text optimisation (Video-P2P --fast): "
                                                              "quicker, the source is then sampled unguided."}),
        }, "optional": {"context": context_input()}}

    def run(self, video_unet, latent, clip, source_prompt, steps, fast, context=None):
        x0 = latent_to_video(latent, video_unet.latent_scale, "latent")
        cond = clip_prompt(clip, source_prompt, "source_prompt", video_unet)
        uncond = clip_prompt(clip, "", "empty prompt", video_unet)
        windows = check_context(context, video_unet, x0.shape[2])
        callback, on_window = denoising_progress(steps * (1 if fast else 2), "NullTextInvertVideo", windows,
                                                 x0.shape[2])
        host.free_accelerator()
        result = null_text_invert_video(video_unet, x0, cond, uncond, NullTextConfig(steps=steps), fast=fast,
                                        device=host.torch_device(), callback=callback, windows=windows,
                                        on_window=on_window)
        tag = {"uncond": result.uncond.cpu(), "steps": steps, "frames": x0.shape[2], "prompt": source_prompt,
               "fast": fast, "base_hash": video_unet.base_hash}
        if windows is not None:
            tag["context"] = windows
        return (video_to_latent(result.noise, video_unet.latent_scale, **{NULL_TEXT_KEY: tag}),)


class VideoP2PEdit:
    """Sample source and edit side by side from null-text-inverted noise with cross-attention control."""

    CATEGORY = "TuneVideo/video-p2p"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT", "LATENT", "IMAGE")
    RETURN_NAMES = ("edited", "source", "attention")
    OUTPUT_TOOLTIPS = ("Edited video latents.", "The source branch: the reconstruction of the input (check the "
                       "inversion with it).", "Cross-attention of the blend and reweight words over the frames "
                                              "(rows: words, source then edit; columns: frames).")
    DESCRIPTION = ("Video-P2P editing: word swap or refinement, reweighting, local blend; the source branch's "
                   "attention is copied into the edit branch for the first steps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video_unet": (VIDEO_UNET, {"tooltip": "The same VIDEO_UNET the inversion used."}),
            "inverted": ("LATENT", {"tooltip": "From Null-Text Invert Video."}),
            "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP: encodes the prompts and finds the words' tokens."}),
            "edit_prompt": ("STRING", {"default": VP2P.edit_prompt, "multiline": True,
                                       "tooltip": "The source prompt with words replaced (word swap) or added "
                                                  "(refine). Plain text, at most 75 tokens."}),
            "mode": (["refine", "word swap"], {"default": "refine" if not VP2P.word_swap else "word swap",
                                               "tooltip": "word swap: same number of words, some replaced. refine: "
                                                          "words added to the source prompt."}),
            "cross_replace_steps": ("FLOAT", {"default": VP2P.cross_replace_steps, "min": 0.0, "max": 1.0,
                                              "step": 0.05, "tooltip": "Fraction of steps whose cross-attention "
                                                                       f"comes from the source (Video-P2P: "
                                                                       f"{VP2P.cross_replace_steps})."}),
            "self_replace_steps": ("FLOAT", {"default": VP2P.self_replace_steps, "min": 0.0, "max": 1.0,
                                             "step": 0.05, "tooltip": "Fraction of steps whose temporal attention "
                                                                      f"comes from the source (Video-P2P: "
                                                                      f"{VP2P.self_replace_steps})."}),
            "blend_words": ("STRING", {"default": VP2P.blend_words,
                                       "tooltip": "Local blend: 'source word, edit word' (e.g. 'rabbit, rabbit'); "
                                                  "outside their attention the source is kept. Empty: off."}),
            "reweight": ("STRING", {"default": VP2P.reweight,
                                    "tooltip": "Edit-prompt words and attention multipliers, e.g. 'origami: 2'. "
                                               "Empty: none."}),
            "blend_threshold": ("FLOAT", {"default": VP2P.blend_threshold, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": f"Local-blend mask threshold (Video-P2P: "
                                                     f"{VP2P.blend_threshold})."}),
            "cfg": ("FLOAT", {"default": VP2P.guidance_scale, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": f"Guidance scale (Video-P2P: {VP2P.guidance_scale})."}),
        }, "optional": {"context": (VIDEO_CONTEXT, {"tooltip": "Optional context windows for long clips: the same "
                                                               "as the null-text inversion's (the source branch "
                                                               "retraces that path)."})}}

    def run(self, video_unet, inverted, clip, edit_prompt, mode, cross_replace_steps, self_replace_steps,
            blend_words, reweight, blend_threshold, cfg, context=None):
        tag = inverted.get(NULL_TEXT_KEY) if isinstance(inverted, dict) else None
        if tag is None:
            raise ValueError("inverted must come from Null-Text Invert Video (it carries the per-step embeddings)")
        _check_inversion(tag, video_unet)
        x_t = latent_to_video(inverted, video_unet.latent_scale, "inverted")
        cond_src = clip_prompt(clip, tag["prompt"], "source prompt", video_unet)
        cond_edit = clip_prompt(clip, edit_prompt, "edit_prompt", video_unet)
        uncond = clip_prompt(clip, "", "empty prompt", video_unet)
        tokenize, decode = clip_tokenizer(clip)
        control = edit_control(tag["prompt"], edit_prompt, tokenize, decode, word_swap=mode == "word swap",
                               blend=_pair(blend_words), reweight=_weights(reweight),
                               cross_replace_steps=cross_replace_steps, self_replace_steps=self_replace_steps,
                               blend_threshold=blend_threshold)
        windows = check_context(context, video_unet, x_t.shape[2])
        _check_same_windows(tag.get("context"), windows)
        callback, on_window = denoising_progress(tag["steps"], "VideoP2PEdit", windows, x_t.shape[2])
        device = host.torch_device()
        host.free_accelerator()
        network = video_unet.network.clone(device=device)
        null_text = tag["uncond"] if len(tag["uncond"]) else None
        out, _, controller = p2p_sample(network, video_unet.schedule, x_t.to(device), cond_src, cond_edit, uncond,
                                        control, steps=tag["steps"], cfg=cfg, null_text=null_text,
                                        fast=tag["fast"], callback=callback, windows=windows, on_window=on_window)
        scale = video_unet.latent_scale
        edited, source = video_to_latent(out[1:], scale), video_to_latent(out[:1], scale)
        return edited, source, attention_image(controller, control, x_t.shape[3])


def _check_inversion(tag: dict, video_unet) -> None:
    if tag.get("base_hash") and video_unet.base_hash and tag["base_hash"] != video_unet.base_hash:
        raise ValueError(f"inverted was made with another model (base {tag['base_hash']}, this VIDEO_UNET is "
                         f"{video_unet.base_hash}); invert with the model you edit with")
    check_tuned_frames(tag["frames"], video_unet, "inverted")


def _check_same_windows(inverted_with, windows) -> None:
    """The edit's source branch retraces the inversion only with the inversion's windows: say so when they differ."""
    if inverted_with != windows:
        logger.warning("VideoP2PEdit: inverted was made with context windows %s but the edit runs with %s; the "
                       "source branch will not retrace the inversion exactly (feed both nodes the same context)",
                       inverted_with, windows)


def _pair(text: str) -> tuple[str, str] | None:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        return None
    if len(words) != 2:
        raise ValueError(f"blend_words {text!r} must be two words, 'source word, edit word'")
    return words[0], words[1]


def _weights(text: str) -> dict[str, float]:
    out = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        word, sep, value = item.rpartition(":")
        if not sep or not word.strip():
            raise ValueError(f"reweight entry {item!r} must be 'word: number', e.g. 'origami: 2'")
        try:
            out[word.strip()] = finite_number(value, f"reweight {word.strip()!r}", -REWEIGHT_LIMIT, REWEIGHT_LIMIT)
        except ValueError as e:
            raise ValueError(f"reweight entry {item!r} must be 'word: number' with a finite number between "
                             f"{-REWEIGHT_LIMIT:g} and {REWEIGHT_LIMIT:g}, e.g. 'origami: 2' ({e})") from e
    return out
