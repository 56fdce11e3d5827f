"""Conversions between ComfyUI values and engine tensors (the only place that knows both conventions).

- ``LATENT``: ``{"samples": [F,4,h,w]}`` unscaled, frames as batch -> engine ``[1,4,F,h,w]`` scaled.
- ``CONDITIONING``: ``[[cond [1,n,d], {...}], ...]`` -> ``[(cond [1,n,d], strength), ...]`` (one per entry).
- ``MODEL``: a ComfyUI ModelPatcher -> LDM state dict, ``unet_config``, noise schedule, latent scale, compute dtype
  (:func:`video_unet_from_model` is the whole MODEL-in chore of a node).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from einops import rearrange

from ..modules.convert.unet import UnsupportedModelError, check_supported
from ..modules.defaults import SD_LATENT_SCALE
from ..modules.finite import finite_number
from ..modules.sampling.schedule import NoiseSchedule
from ..modules.video_unet import VideoUNet

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


#: Entry keys the engine honours or that SD1.x/SD2.x sampling ignores in ComfyUI too (their UNets take no pooled
#: vector). Every other key changes ComfyUI's result, so it is refused rather than silently dropped.
_HONOURED = {"strength"}
_IGNORED = {"pooled_output"}
_REFUSED_HINTS = {
    "area": "Conditioning (Set Area)", "mask": "Conditioning (Set Mask)", "control": "Apply ControlNet",
    "gligen": "GLIGEN Textbox Apply", "hooks": "a hook/scheduled-LoRA node",
    "start_percent": "Conditioning (Set Timestep Range)", "end_percent": "Conditioning (Set Timestep Range)",
}


def _check_entry_keys(options: dict, name: str, index: int) -> None:
    for key, value in options.items():
        if key in _HONOURED or key in _IGNORED or value is None:
            continue
        if key == "start_percent" and value == 0.0 or key == "end_percent" and value == 1.0:
            continue  # the full range: no restriction
        origin = f" (from {_REFUSED_HINTS[key]})" if key in _REFUSED_HINTS else ""
        raise ValueError(f"{name}: entry {index} carries '{key}'{origin}, which video sampling cannot honour; "
                         f"connect plain text-encoder conditioning (Combine/Concat/Average are fine)")


def conditioning_entries(conditioning, name: str, video_unet) -> list[tuple[torch.Tensor, float]]:
    """``CONDITIONING`` -> ``[(embeddings [1, n, d], strength), ...]``, one per entry, checked against the
    VIDEO_UNET's cross-attention width. Several entries come from Conditioning (Combine); the engine averages their
    predictions weighted by strength, as ComfyUI's samplers do (:mod:`~..modules.conditioning`)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{name} must be a CONDITIONING from a text encoder node")
    expected = video_unet.network.config.cross_attention_dim
    entries = []
    for i, entry in enumerate(conditioning):
        try:
            cond, options = entry[0], entry[1]
        except (TypeError, IndexError, KeyError) as e:
            raise ValueError(f"{name} must be a CONDITIONING from a text encoder node") from e
        if not torch.is_tensor(cond) or cond.dim() != 3:
            raise ValueError(f"{name} must hold [1, tokens, dim] embeddings, got "
                             f"{getattr(cond, 'shape', type(cond).__name__)}")
        if cond.shape[-1] != expected:
            raise ValueError(f"{name} has {cond.shape[-1]}-dim embeddings but the model expects {expected} "
                             f"(text encoder of another model family?)")
        options = dict(options or {})
        _check_entry_keys(options, name, i)
        strength = float(options.get("strength", 1.0))
        if not strength > 0:
            raise ValueError(f"{name}: entry {i} has strength {strength}; it must be > 0")
        entries.append((cond[:1].float(), strength))
    return entries


def conditioning_tensor(conditioning, name: str, video_unet) -> torch.Tensor:
    """A one-entry ``CONDITIONING`` -> ``[1, n, d]``: what training needs (one prompt per clip)."""
    entries = conditioning_entries(conditioning, name, video_unet)
    if len(entries) > 1:
        raise ValueError(f"{name} has {len(entries)} entries (from Conditioning (Combine)); tuning learns one "
                         f"prompt: encode a single prompt, or join them with Conditioning (Concat)")
    return entries[0][0]


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


class ModelParts(NamedTuple):
    """What the engine builds a VIDEO_UNET from (``dtype`` None: keep the weights as stored)."""

    state_dict: dict
    unet_config: dict
    schedule: NoiseSchedule
    latent_scale: float
    dtype: torch.dtype | None


def model_schedule(model) -> NoiseSchedule:
    """The noise schedule and prediction type a ComfyUI MODEL samples with (its possibly patched model_sampling)."""
    inner = getattr(model, "model", None)
    if inner is None:
        raise UnsupportedModelError(f"model must be a ComfyUI MODEL, got {type(model).__name__}")
    config_obj = getattr(inner, "model_config", None)
    family = type(config_obj).__name__ if config_obj is not None else "unknown"
    get = getattr(model, "get_model_object", None)
    sampling = get("model_sampling") if callable(get) else inner.model_sampling
    prediction = _prediction_type(sampling, inner, family)
    if not torch.is_tensor(getattr(sampling, "sigmas", None)):
        raise UnsupportedModelError(f"MODEL {family} has no discrete sigma schedule (continuous/EDM sampling is not "
                                    f"supported)")
    return NoiseSchedule.from_sigmas(sampling.sigmas, prediction)


def model_parts(model) -> ModelParts:
    """ComfyUI MODEL -> (LDM UNet state dict, unet_config, schedule, latent scale, compute dtype), with clear
    errors."""
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
    schedule = model_schedule(model)
    scale = float(getattr(getattr(inner, "latent_format", None), "scale_factor", SD_LATENT_SCALE))
    from . import host

    state_dict = host.diffusion_model(model).state_dict()
    return ModelParts(state_dict, unet_config, schedule, scale, compute_dtype(state_dict, inner))


def video_unet_from_model(model, build: Callable[[ModelParts], VideoUNet]) -> VideoUNet:
    """A node's MODEL input -> VIDEO_UNET: bake the MODEL's patches (LoRAs) into its weights, read its parts,
    ``build(parts)`` with the engine, park the result off the accelerator."""
    from . import host

    host.apply_patches(model)
    return parked(build(model_parts(model)).replace(source_patches=weight_patches_id(model)))


def weight_patches_id(model) -> str:
    """Which weight patches (LoRAs...) a ModelPatcher carries: ComfyUI gives each new set a uuid that clones keep;
    "" without patches."""
    return str(getattr(model, "patches_uuid", "")) if getattr(model, "patches", None) else ""


def check_tuned_frames(frames: int, video_unet, what: str) -> None:
    """Inverted noise must have the frame count the VIDEO_UNET was last tuned on (its attention saw that clip)."""
    tuned = [r.frames for r in video_unet.history]
    if tuned and frames != tuned[-1]:
        raise ValueError(f"{what} has {frames} frames but the VIDEO_UNET was tuned on {tuned[-1]} frames; invert "
                         f"the same clip you tuned on (same frame_count/stride)")


def clip_tokenizer(clip):
    """``(tokenize(text) -> ids with start/end, decode(id) -> text)`` from a ComfyUI CLIP's own BPE tokenizer (the
    checkpoint's; nothing is downloaded)."""
    outer = getattr(clip, "tokenizer", None)
    inner = getattr(outer, getattr(outer, "clip", ""), None)
    bpe = getattr(inner, "tokenizer", None)
    if bpe is None or not callable(getattr(bpe, "decode", None)):
        raise ValueError("clip must be an SD1.x/SD2.x CLIP from Load Checkpoint (its tokenizer was not found)")
    return (lambda text: list(bpe(text)["input_ids"])), (lambda token: bpe.decode([token]))


def clip_prompt(clip, text: str, name: str, video_unet) -> torch.Tensor:
    """Encode one plain prompt through ComfyUI's CLIP -> ``[1, 77, d]``; refuses weight syntax and long prompts,
    which would move or re-weight the tokens prompt-to-prompt addresses."""
    if any(c in text for c in "()") or "embedding:" in text:
        raise ValueError(f"{name}: prompt-to-prompt needs plain text; '(word:weight)' and embeddings change the "
                         f"tokens it addresses (use the reweight input instead)")
    cond = clip.encode_from_tokens(clip.tokenize(text))
    if cond.shape[1] != 77:
        raise ValueError(f"{name} has more than 75 tokens ({cond.shape[1]} conditioning tokens); prompt-to-prompt "
                         f"works within one 77-token window")
    return conditioning_tensor([[cond, {}]], name, video_unet)


def parked(video_unet: VideoUNet) -> VideoUNet:
    """``video_unet`` with its network on ComfyUI's offload device: ComfyUI cannot see our models, so they must not
    hold accelerator memory between nodes. Weights already there are shared, not copied."""
    from . import host

    where = host.offload_device()
    if any(p.device != where for p in video_unet.network.parameters()):
        return video_unet.replace(network=video_unet.network.clone(device=where))
    return video_unet


def _float_inputs(cls) -> list[str]:
    spec = cls.INPUT_TYPES()
    return [name for section in ("required", "optional") for name, entry in spec.get(section, {}).items()
            if entry and entry[0] == "FLOAT"]


def check_float_inputs(cls) -> type:
    """Make ``cls``'s FUNCTION refuse a NaN or infinite FLOAT input, naming it (ComfyUI's min/max check lets NaN
    through: every comparison with NaN is false). Applied once to every node class at registration; idempotent."""
    name = cls.FUNCTION
    method = getattr(cls, name)
    if getattr(method, "_checks_floats", False):
        return cls
    signature = inspect.signature(method)
    floats: list[list[str]] = []  # the FLOAT inputs, read from INPUT_TYPES on the first call

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if not floats:
            floats.append(_float_inputs(cls))
        bound = signature.bind_partial(self, *args, **kwargs).arguments
        for key in floats[0]:
            if key in bound and bound[key] is not None:
                finite_number(bound[key], key)
        return method(self, *args, **kwargs)

    checked._checks_floats = True
    setattr(cls, name, checked)
    return cls


def check_declared_ranges(spec: dict, **values) -> None:
    """Refuse INT/FLOAT ``values`` outside the ``min``/``max`` that ``spec`` (an ``INPUT_TYPES()`` result) declares,
    for calls that bypass ComfyUI's validation (API graphs of nodes with VALIDATE_INPUTS, direct calls)."""
    entries = {k: v for section in spec.values() for k, v in section.items()}
    for name, value in values.items():
        kind, options = entries[name][0], entries[name][1]
        if kind not in ("INT", "FLOAT"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}={value!r} must be a number")
        number = finite_number(value, name)
        low, high = options.get("min"), options.get("max")
        if low is not None and number < low or high is not None and number > high:
            raise ValueError(f"{name}={value} is outside its allowed range [{low}, {high}]")
