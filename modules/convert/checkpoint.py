"""Headless loading of Stable Diffusion 1.x / 2.x single-file checkpoints.

Format: the original LDM checkpoint layout of Stable Diffusion (Rombach et al., CVPR 2022), as kept in
``ComfyUI/models/checkpoints/*.safetensors``:

* ``model.diffusion_model.*``: the UNet (converted by :mod:`.convert`);
* ``first_stage_model.*``: the KL autoencoder (LDM ``encoder.down.{i}.block.{j}``, ``mid.attn_1.{q,k,v,proj_out}``
  with 1x1-conv attention weights, ...), converted by :mod:`.vae_convert` to diffusers' ``AutoencoderKL``;
* ``cond_stage_model.transformer.[text_model.]*``: SD1's OpenAI CLIP ViT-L/14 text encoder (Radford et al., 2021),
  already in Hugging Face ``CLIPTextModel`` naming (:mod:`.text_encoder`);
* ``cond_stage_model.model.*``: SD2's OpenCLIP ViT-H/14 text encoder (fused ``attn.in_proj_weight``,
  ``transformer.resblocks.{i}``, ``ln_final``), converted by :mod:`.text_encoder` to a ``CLIPTextModel``.
  SD2 conditions on the *penultimate* layer followed by the final layer norm (``text_layer=-2``);
* optional ``alphas_cumprod`` (the DDPM buffers LDM saves) and ComfyUI's ``v_pred`` marker key.

Every config is derived from weight shapes in code; nothing is downloaded. Only safetensors are read, never pickles.

Prediction type rule (``prediction_type="auto"``): an explicit marker wins (safetensors metadata ``prediction_type``
or ``modelspec.prediction_type``, or a ``v_pred`` key as ComfyUI writes); otherwise SD1 -> ``epsilon`` and
SD2 -> ``v_prediction`` (the 768-v model). SD2's 512-base model is epsilon but cannot be told apart by its weights:
pass ``prediction_type="epsilon"`` for it.

Model fingerprint: ``SDComponents.sha256_short`` is :func:`~.identity.unet_hash` (every UNet key and shape plus
the first 4096 values of each tensor, rounded to fp16; prefix- and storage-dtype-independent, ~5 MB read for an
860M-parameter UNet) over the stored UNet tensors, so ComfyUI's ``diffusion_model.state_dict()`` hashes the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from ..defaults import SD_LATENT_SCALE
from ..files import PICKLE_SUFFIXES
from ..files.reader import read_header, read_safetensors
from ..sampling.schedule import PREDICTION_TYPES, NoiseSchedule
from .identity import unet_fingerprint, unet_hash
from .state_dict import describe_keys, sub_prefix
from .text_encoder import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    TokenizerNotFoundError,
    byte_tokenizer,
    check_tokenizer_fits,
    encode_tokens,
    load_tokenizer,
    open_clip_to_hf_keys,
    text_encoder_from_ldm,
    text_encoder_from_open_clip,
    text_encoder_to_ldm,
    token_windows,
    tokenize,
    write_byte_tokenizer,
)
from .unet import (
    LDM_UNET_PREFIX,
    UnsupportedModelError,
    detect_unet_config,
    strip_ldm_prefix,
    unet_from_ldm,
    unet_to_ldm,
)
from .vae import VAE_PREFIX, vae_config_from_ldm, vae_from_ldm, vae_ldm_key_for, vae_to_ldm

#: Metadata key marking a checkpoint as a tiny random test/demo model (its tokenizer is then the byte tokenizer).
TINY_MARKER = "tunevideo_tiny"

logger = logging.getLogger(__name__)

__all__ = [
    "SDComponents", "load_checkpoint", "encode_prompt", "encode_long_prompt", "encode_tokens", "tokenize",
    "unet_hash", "vae_from_ldm", "vae_to_ldm", "vae_config_from_ldm", "text_encoder_from_ldm",
    "text_encoder_to_ldm", "text_encoder_from_open_clip", "load_tokenizer", "write_byte_tokenizer",
    "byte_tokenizer", "TokenizerNotFoundError", "open_clip_to_hf_keys",
    "vae_ldm_key_for",
]

_UNSUPPORTED_PREFIXES = {
    "conditioner.embedders.": "SDXL-style conditioner.embedders.* text encoders (SDXL / SDXL refiner / SVD)",
    "embedder.": "an unCLIP image embedder (embedder.*)",
    "depth_model.": "an SD2 depth model (depth_model.*)",
}



@dataclass
class SDComponents:
    """What a Stable Diffusion single-file checkpoint holds, as diffusers / transformers modules.

    Attributes:
        unet: ``UNet2DConditionModel`` (eval mode), input ``[B, 4, h, w]`` latents.
        vae: ``AutoencoderKL``; images ``[B, 3, H, W]`` in [-1, 1] <-> latents ``[B, 4, H/8, W/8]``.
        text_encoder: ``CLIPTextModel``; use :func:`encode_prompt`.
        tokenizer: a ``CLIPTokenizer``, or any callable taking ``(prompts, padding=, max_length=, truncation=,
            return_tensors=)`` like it and returning ``input_ids`` ``[B, 77]`` (a tensor or a mapping).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        alphas_cumprod: ``[1000]`` float64 training schedule.
        kind: ``"sd1"`` or ``"sd2"``.
        sha256_short: :func:`unet_hash` of the UNet weights as stored in the file.
        fingerprint: :func:`~.identity.unet_fingerprint` of them (matches the same base at other precisions).
        latent_scale: VAE latent scaling factor (0.18215 for SD1/SD2).
        text_layer: ``-1`` (SD1: last layer) or ``-2`` (SD2: penultimate layer, then the final layer norm).
        unet_config: the ComfyUI-style ``unet_config`` read off the UNet weights.
        metadata: the file's safetensors metadata.
        path: the file read.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    prediction_type: str
    alphas_cumprod: torch.Tensor
    kind: str
    sha256_short: str
    fingerprint: str = ""
    latent_scale: float = SD_LATENT_SCALE
    text_layer: int = -1
    unet_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.alphas_cumprod, self.prediction_type)


# ----------------------------------------------------------------------------------------------------------- loading
def _check_path(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: only .safetensors checkpoints are read ({path.suffix} files are Python pickles "
                         f"that can run code when loaded); convert it to .safetensors first")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a single-file .safetensors checkpoint (diffusers folders are not "
                         f"read by this loader)")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")


def _read(path: Path, dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Tensors of the parts this loader uses (UNet at its stored dtype, the rest cast to ``dtype``), metadata, keys."""
    wanted = (LDM_UNET_PREFIX, VAE_PREFIX, SD1_TEXT_PREFIX, SD2_TEXT_PREFIX)
    keys, meta = read_header(path, "checkpoint")
    if _unsupported_reason(keys) or not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return {}, meta, keys

    def convert(k: str, t: torch.Tensor) -> torch.Tensor:
        keep = k.startswith(LDM_UNET_PREFIX) or k == "alphas_cumprod"  # hashed / read as stored
        return t if keep or dtype is None or not t.is_floating_point() else t.to(dtype)

    tensors, _ = read_safetensors(path, "checkpoint", lambda k: k.startswith(wanted) or k in ("alphas_cumprod",
                                                                                            "v_pred"), convert)
    return tensors, meta, keys


def _unsupported_reason(keys: Sequence[str]) -> str | None:
    for prefix, what in _UNSUPPORTED_PREFIXES.items():
        if any(k.startswith(prefix) for k in keys):
            return what
    return None


def load_checkpoint(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    *,
    prediction_type: str = "auto",
    tokenizer_dir: str | os.PathLike | None = None,
) -> SDComponents:
    """Load an SD1.x / SD2.x single-file ``.safetensors`` checkpoint without any network access.

    Args:
        path: the checkpoint file (e.g. ``ComfyUI/models/checkpoints/v1-5-pruned-emaonly.safetensors``).
        dtype: dtype of the returned modules.
        prediction_type: ``"auto"`` (see the module docstring for the rule), ``"epsilon"`` or ``"v_prediction"``.
        tokenizer_dir: folder with ``vocab.json`` + ``merges.txt`` (e.g. ComfyUI's ``comfy/sd1_tokenizer``);
            default ``$COMFYUI_PATH/comfy/sd1_tokenizer``. Tiny built-in checkpoints use the built-in tokenizer.
    Raises:
        FileNotFoundError: ``path`` does not exist (:class:`TokenizerNotFoundError`: no tokenizer files).
        ValueError: not a safetensors file, or unreadable; bad ``prediction_type``.
        UnsupportedModelError: not an SD1.x/SD2.x checkpoint (SDXL, UNet-only, LoRA, ...), naming what was found.
    """
    if prediction_type != "auto" and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}; expected 'auto' or one of {PREDICTION_TYPES}")
    path = Path(path)
    _check_path(path)
    tensors, meta, keys = _read(path, dtype)
    reason = _unsupported_reason(keys)
    if reason:
        raise UnsupportedModelError(f"{path.name}: found {reason}; only SD1.x / SD2.x single-file checkpoints are "
                                    f"supported (keys: {describe_keys(keys)})")
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise UnsupportedModelError(f"{path.name}: no {LDM_UNET_PREFIX}* UNet weights, so this is not an SD1.x/SD2.x "
                                    f"single-file checkpoint (found {describe_keys(keys)}; UNet-only, LoRA or "
                                    f"diffusers-layout files are not read here)")
    is_sd2 = any(k.startswith(SD2_TEXT_PREFIX) for k in keys)
    if not is_sd2 and not any(k.startswith(SD1_TEXT_PREFIX) for k in keys):
        raise UnsupportedModelError(f"{path.name}: no text encoder ({SD1_TEXT_PREFIX}* for SD1 or {SD2_TEXT_PREFIX}* "
                                    f"for SD2); found {describe_keys(keys)}")
    kind = "sd2" if is_sd2 else "sd1"

    raw_unet = strip_ldm_prefix(sub_prefix(tensors, LDM_UNET_PREFIX))
    unet_config = detect_unet_config(raw_unet)
    unet = unet_from_ldm(raw_unet, unet_config, dtype=dtype)
    used = set(unet_to_ldm(unet))
    used_weights = {k: v for k, v in raw_unet.items() if k in used}
    sha, fingerprint = unet_hash(used_weights), unet_fingerprint(used_weights)
    del raw_unet

    vae = vae_from_ldm(sub_prefix(tensors, VAE_PREFIX), dtype=dtype, name=path.name)
    if kind == "sd2":
        text_encoder = text_encoder_from_open_clip(sub_prefix(tensors, SD2_TEXT_PREFIX), dtype=dtype, name=path.name)
    else:
        text_encoder = text_encoder_from_ldm(sub_prefix(tensors, SD1_TEXT_PREFIX), dtype=dtype, name=path.name)
    hidden = text_encoder.config.hidden_size
    if unet_config["context_dim"] != hidden:
        raise UnsupportedModelError(f"{path.name}: UNet cross-attention width {unet_config['context_dim']} does not "
                                    f"match the text encoder width {hidden}")

    tiny = meta.get(TINY_MARKER) == "1"
    tokenizer = load_tokenizer(tokenizer_dir, kind=kind, tiny=tiny)
    check_tokenizer_fits(tokenizer, text_encoder, path)
    alphas = _alphas_cumprod(tensors.get("alphas_cumprod"), path)
    pred = _resolve_prediction_type(prediction_type, kind, meta, "v_pred" in tensors, path)
    comps = SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, prediction_type=pred,
                         alphas_cumprod=alphas, kind=kind, sha256_short=sha, fingerprint=fingerprint,
                         latent_scale=SD_LATENT_SCALE,
                         text_layer=-2 if kind == "sd2" else -1, unet_config=unet_config, metadata=meta, path=path)
    logger.info("loaded %s: %s, %s, UNet %.0fM params, text width %d, hash %s%s", path.name, kind, pred,
                sum(p.numel() for p in unet.parameters()) / 1e6, hidden, sha, " (tiny random model)" if tiny else "")
    return comps


def _alphas_cumprod(stored: torch.Tensor | None, path: Path) -> torch.Tensor:
    """SD's ``scaled_linear`` schedule in float64; a checkpoint's own ``alphas_cumprod`` is used when it differs from
    it by more than storage rounding (fp16/bf16 copies of the SD schedule give the exact float64 one)."""
    ref = NoiseSchedule.scaled_linear().alphas_cumprod
    if stored is None:
        return ref
    a = stored.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape == ref.shape and torch.allclose(a, ref, rtol=5e-3, atol=0.0):
        return ref
    if a.numel() < 2 or not bool(((a > 0) & (a < 1)).all()):
        raise UnsupportedModelError(f"{path.name}: its alphas_cumprod ({a.numel()} values, range "
                                    f"[{a.min().item():.3g}, {a.max().item():.3g}]) is not a usable noise schedule "
                                    f"(zero terminal SNR schedules are not supported)")
    logger.info("%s carries its own noise schedule (alphas_cumprod differs from SD's scaled_linear); using it",
                path.name)
    return a


def _resolve_prediction_type(requested: str, kind: str, meta: Mapping[str, str], v_pred_key: bool,
                             path: Path) -> str:
    if requested != "auto":
        return requested
    for key in ("prediction_type", "modelspec.prediction_type"):
        value = str(meta.get(key, "")).strip().lower()
        if value in ("epsilon", "eps"):
            return "epsilon"
        if value in ("v_prediction", "v", "v-prediction", "v_pred"):
            return "v_prediction"
    if v_pred_key:
        return "v_prediction"
    if kind == "sd2":
        logger.warning("%s: SD2 checkpoint without a prediction-type marker; assuming v_prediction (SD2 768-v). "
                       "For SD2 512-base pass prediction_type='epsilon'", path.name)
        return "v_prediction"
    return "epsilon"


# -------------------------------------------------------------------------------------------------------------- VAE
def encode_prompt(components: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Encode ``prompts`` (``B`` strings) to ``[B, 77, D]`` conditioning, as SD1 / SD2 do (see :func:`encode_tokens`);
    prompts over 75 tokens are truncated (:func:`encode_long_prompt` keeps them whole).

    The result is in the text encoder's dtype and on its device.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty")
    length = components.text_encoder.config.max_position_embeddings
    ids = tokenize(components.tokenizer, prompts, length)
    return encode_tokens(components.text_encoder, ids, components.text_layer)


def encode_long_prompt(components: SDComponents, prompt: str) -> torch.Tensor:
    """One prompt of any length -> ``[1, 77 k, D]`` conditioning, windowed as ComfyUI's CLIP Text Encode does
    (:func:`~.text_encoder.token_windows`); equals :func:`encode_prompt` up to 75 tokens."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    length = components.text_encoder.config.max_position_embeddings
    ids = token_windows(components.tokenizer, prompt, length)
    out = encode_tokens(components.text_encoder, ids, components.text_layer)
    return out.reshape(1, -1, out.shape[-1])
