"""Headless loading of Stable Diffusion 1.x / 2.x single-file checkpoints, and a tiny random model in that layout.

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

Model fingerprint: ``SDComponents.sha256_short`` is :func:`~.checkpoint_io.unet_hash` (every UNet key and shape plus
the first 4096 values of each tensor, rounded to fp16; prefix- and storage-dtype-independent, ~5 MB read for an
860M-parameter UNet) over the stored UNet tensors, so ComfyUI's ``diffusion_model.state_dict()`` hashes the same.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from .atomic import atomic_write
from .checkpoint_io import unet_fingerprint, unet_hash
from .convert import (
    LDM_UNET_PREFIX,
    UnsupportedModelError,
    detect_unet_config,
    diffusers_config_from_unet_config,
    strip_ldm_prefix,
    unet_from_ldm,
    unet_to_ldm,
)
from .schedule import PREDICTION_TYPES, NoiseSchedule
from .text_encoder import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    TokenizerNotFoundError,
    byte_chars,
    byte_tokenizer,
    check_tokenizer_fits,
    encode_tokens,
    load_tokenizer,
    open_clip_to_hf_keys,
    text_encoder_from_ldm,
    text_encoder_from_open_clip,
    text_encoder_to_ldm,
    tokenize,
    write_byte_tokenizer,
)
from .vae_convert import LATENT_SCALE, VAE_PREFIX, vae_config_from_ldm, vae_from_ldm, vae_ldm_key_for, vae_to_ldm
from .weights import describe_keys, sub_prefix

logger = logging.getLogger(__name__)

__all__ = [
    "SDComponents", "load_checkpoint", "encode_prompt", "encode_tokens", "tokenize", "write_tiny_checkpoint",
    "unet_hash", "vae_from_ldm", "vae_to_ldm", "vae_config_from_ldm", "text_encoder_from_ldm",
    "text_encoder_to_ldm", "text_encoder_from_open_clip", "load_tokenizer", "write_byte_tokenizer",
    "byte_tokenizer", "TokenizerNotFoundError", "TINY_UNET_CONFIG", "tiny_modules", "open_clip_to_hf_keys",
    "vae_ldm_key_for",
]

TINY_MARKER = "tunevideo_tiny"
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_UNSUPPORTED_PREFIXES = {
    "conditioner.embedders.": "SDXL-style conditioner.embedders.* text encoders (SDXL / SDXL refiner / SVD)",
    "embedder.": "an unCLIP image embedder (embedder.*)",
    "depth_model.": "an SD2 depth model (depth_model.*)",
}

#: SD1-layout tiny UNet (ComfyUI unet_config): 3 cross-attention levels + 1 plain level, 2 res blocks each.
#: 8 heads because :func:`~.convert.detect_unet_config` reads the SD1 layout as 8 heads, so the loaded model is the
#: written one, forward included.
TINY_UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 2, 2],
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "context_dim": 64, "num_heads": 8, "num_head_channels": -1, "use_linear_in_transformer": False,
    "adm_in_channels": None, "image_size": 32,
}
TINY_VAE = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 2, "latent_channels": 4}
TINY_TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 256, "max_position_embeddings": 77}


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
        fingerprint: :func:`~.checkpoint_io.unet_fingerprint` of them (matches the same base at other precisions).
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
    latent_scale: float = LATENT_SCALE
    text_layer: int = -1
    unet_config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.alphas_cumprod, self.prediction_type)


# ----------------------------------------------------------------------------------------------------------- loading
def _check_path(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
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
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            if _unsupported_reason(keys) or not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
                return {}, meta, keys
            tensors = {}
            for k in keys:
                if k.startswith(wanted) or k in ("alphas_cumprod", "v_pred"):
                    t = f.get_tensor(k)
                    keep = k.startswith(LDM_UNET_PREFIX) or k == "alphas_cumprod"  # hashed / read as stored
                    tensors[k] = t if keep or dtype is None or not t.is_floating_point() else t.to(dtype)
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
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
                         latent_scale=LATENT_SCALE,
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
    """Encode ``prompts`` (``B`` strings) to ``[B, 77, D]`` conditioning, as SD1 / SD2 do (see :func:`encode_tokens`).

    The result is in the text encoder's dtype and on its device.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty")
    length = components.text_encoder.config.max_position_embeddings
    ids = tokenize(components.tokenizer, prompts, length)
    return encode_tokens(components.text_encoder, ids, components.text_layer)


# -------------------------------------------------------------------------------------------------------- tiny model
def _perturb_norms(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Random GroupNorm/LayerNorm affine parameters, so tests notice swapped or missing norm weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(scale * torch.randn_like(p))


def tiny_modules(seed: int = 0) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The tiny random SD1-layout UNet, VAE (8x downsampling, 4 latent channels) and CLIP text encoder (vocab 514).

    The global RNG state is left untouched.
    """
    n = len(TINY_VAE["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(TINY_UNET_CONFIG))
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                            norm_num_groups=32, sample_size=512, scaling_factor=LATENT_SCALE, **TINY_VAE)
        vocab = len(byte_chars()) * 2 + 2
        text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, num_attention_heads=TINY_TEXT["hidden_size"] // 64,
                                            hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                            pad_token_id=vocab - 1, **TINY_TEXT))
        for m in (unet, vae, text):
            _perturb_norms(m)
    return unet.eval(), vae.eval(), text.eval()


def write_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> dict[str, str]:
    """Write a tiny random-weight SD1-layout single-file checkpoint (~19 MB) for demos and tests.

    Same keys as a real SD1.5 file (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.text_model.*``, ``alphas_cumprod``), much smaller sizes; metadata
    ``tunevideo_tiny=1`` makes :func:`load_checkpoint` use the built-in byte tokenizer. Written atomically; an
    existing file is only replaced with ``overwrite=True``. Returns the metadata written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"tiny checkpoint name {path.name!r} must end with .safetensors")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True")
    unet, vae, text = tiny_modules(seed)
    unet_sd = unet_to_ldm(unet, prefix=LDM_UNET_PREFIX)
    tensors = {**unet_sd, **vae_to_ldm(vae), **text_encoder_to_ldm(text),
               "alphas_cumprod": NoiseSchedule.scaled_linear().alphas_cumprod.float()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        TINY_MARKER: "1",
        "format": "ldm-single-file",
        "kind": "sd1",
        "prediction_type": "epsilon",
        "seed": str(seed),
        "unet_hash": unet_hash(unet_sd),
        "unet_config": json.dumps(TINY_UNET_CONFIG),
        "vae_config": json.dumps(TINY_VAE),
        "text_config": json.dumps(TINY_TEXT),
        "tokenizer": "built-in byte-level BPE without merges (514 tokens)",
        "note": "RANDOM weights for tests and the demo; generated images are noise",
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite)
    logger.info("wrote tiny random checkpoint %s (%d tensors)", path, len(tensors))
    return meta
