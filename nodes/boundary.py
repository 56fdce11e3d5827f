"""Conversions between ComfyUI values and engine tensors (the only place that knows both conventions).

- ``LATENT``: ``{"samples": [F,4,h,w]}`` unscaled, frames as batch -> engine ``[1,4,F,h,w]`` scaled.
- ``CONDITIONING``: ``[[cond [1,n,d], {...}], ...]`` -> ``[1,n,d]``.
- ``MODEL``: a ComfyUI ModelPatcher -> LDM state dict, ``unet_config``, noise schedule, latent scale.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..modules.convert import UnsupportedModelError, check_supported
from ..modules.schedule import NoiseSchedule

INVERTED_KEY = "tunevideo_inverted"
VIDEO_UNET = "VIDEO_UNET"


def latent_to_video(latent: dict, scale: float, name: str = "latent") -> torch.Tensor:
    """``LATENT`` -> ``[1, c, F, h, w]`` scaled, float32."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"{name} must be a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    s = latent["samples"]
    if s.dim() != 4:
        raise ValueError(f"{name} samples must be [frames, 4, h, w], got shape {tuple(s.shape)}")
    if s.shape[1] != 4:
        raise ValueError(f"{name} has {s.shape[1]} latent channels; SD1.x/SD2.x latents have 4")
    return rearrange(s.float(), "f c h w -> 1 c f h w") * scale


def video_to_latent(video: torch.Tensor, scale: float, **extra) -> dict:
    """``[1, c, F, h, w]`` scaled -> ``LATENT`` (unscaled, frames as batch, on the CPU)."""
    out = {"samples": rearrange(video.float() / scale, "1 c f h w -> f c h w").cpu()}
    out.update(extra)
    return out


def conditioning_tensor(conditioning, name: str, model) -> torch.Tensor:
    """``CONDITIONING`` -> ``[1, n, d]`` (area/mask options are not used by video sampling), checked against the
    VIDEO_UNET's cross-attention width."""
    try:
        cond = conditioning[0][0]
    except (TypeError, IndexError, KeyError) as e:
        raise ValueError(f"{name} must be a CONDITIONING from a text encoder node") from e
    if not torch.is_tensor(cond) or cond.dim() != 3:
        raise ValueError(f"{name} must hold [1, tokens, dim] embeddings, got {getattr(cond, 'shape', type(cond))}")
    if len(conditioning) > 1:
        # Concatenated prompts (ConditioningConcat) come as several entries; use them one after another like tokens.
        cond = torch.cat([c[0] for c in conditioning], dim=1)
    expected = model.unet.config.cross_attention_dim
    if cond.shape[-1] != expected:
        raise ValueError(f"{name} has {cond.shape[-1]}-dim embeddings but the model expects {expected} "
                         f"(text encoder of another model family?)")
    return cond[:1].float()


def _prediction_type(sampling, inner, family: str) -> str:
    """eps or v from the model_sampling class (object patches such as ModelSamplingDiscrete replace it)."""
    names = {c.__name__ for c in type(sampling).__mro__}
    if "V_PREDICTION" in names:
        return "v_prediction"
    if "EPS" in names:
        return "epsilon"
    model_type = getattr(getattr(inner, "model_type", None), "name", "EPS")
    prediction = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(model_type)
    if prediction is None:
        raise UnsupportedModelError(f"MODEL {family} uses {model_type} prediction; only EPS and V_PREDICTION "
                                    f"(SD1.x/SD2.x) are supported")
    return prediction


def compute_dtype(state_dict: dict, inner) -> torch.dtype | None:
    """None to keep the weights as stored; a float dtype when they are stored in a format torch cannot compute in
    directly (fp8 with ComfyUI's manual cast)."""
    usable = {torch.float16, torch.bfloat16, torch.float32}
    if all(t.dtype in usable for t in state_dict.values()):
        return None
    return getattr(inner, "manual_cast_dtype", None) or torch.float16


def model_parts(model) -> tuple[dict, dict, NoiseSchedule, float]:
    """ComfyUI MODEL -> (LDM UNet state dict, unet_config, schedule, latent scale), with clear errors."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "diffusion_model"):
        raise UnsupportedModelError(f"model must be a ComfyUI MODEL, got {type(model).__name__}")
    config_obj = getattr(inner, "model_config", None)
    family = type(config_obj).__name__ if config_obj is not None else "unknown"
    unet_config = dict(getattr(config_obj, "unet_config", {}) or {})
    try:
        check_supported(unet_config)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"MODEL is {family}: {e}") from e
    get = getattr(model, "get_model_object", None)
    sampling = get("model_sampling") if callable(get) else inner.model_sampling
    prediction = _prediction_type(sampling, inner, family)
    if not torch.is_tensor(getattr(sampling, "sigmas", None)):
        raise UnsupportedModelError(f"MODEL {family} has no discrete sigma schedule (continuous/EDM sampling is not "
                                    f"supported)")
    schedule = NoiseSchedule.from_sigmas(sampling.sigmas, prediction)
    scale = float(getattr(getattr(inner, "latent_format", None), "scale_factor", 0.18215))
    return inner.diffusion_model.state_dict(), unet_config, schedule, scale
