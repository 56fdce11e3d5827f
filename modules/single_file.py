"""Headless loading of Stable Diffusion 1.x / 2.x single-file checkpoints, and a tiny random model in that layout.

Format: the original LDM checkpoint layout of Stable Diffusion (Rombach et al., CVPR 2022), as kept in
``ComfyUI/models/checkpoints/*.safetensors``:

* ``model.diffusion_model.*``: the UNet (converted by :mod:`.convert`);
* ``first_stage_model.*``: the KL autoencoder (LDM ``encoder.down.{i}.block.{j}``, ``mid.attn_1.{q,k,v,proj_out}``
  with 1x1-conv attention weights, ...), converted here to diffusers' ``AutoencoderKL``;
* ``cond_stage_model.transformer.[text_model.]*``: SD1's OpenAI CLIP ViT-L/14 text encoder (Radford et al., 2021),
  already in Hugging Face ``CLIPTextModel`` naming;
* ``cond_stage_model.model.*``: SD2's OpenCLIP ViT-H/14 text encoder (fused ``attn.in_proj_weight``,
  ``transformer.resblocks.{i}``, ``ln_final``), converted here to a ``CLIPTextModel`` with ``gelu``. SD2 conditions on
  the *penultimate* layer followed by the final layer norm (``text_layer=-2``);
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
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .atomic import atomic_write
from .checkpoint_io import unet_hash
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

logger = logging.getLogger(__name__)

__all__ = [
    "SDComponents", "load_checkpoint", "encode_prompt", "encode_tokens", "tokenize", "write_tiny_checkpoint",
    "unet_hash", "vae_from_ldm", "vae_to_ldm", "vae_config_from_ldm", "text_encoder_from_ldm",
    "text_encoder_to_ldm", "text_encoder_from_open_clip", "load_tokenizer", "write_byte_tokenizer",
    "byte_tokenizer", "TokenizerNotFoundError", "TINY_UNET_CONFIG", "tiny_modules", "open_clip_to_hf_keys",
    "vae_ldm_key_for",
]

VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD1_TEXT_WRITE_PREFIX = SD1_TEXT_PREFIX + "text_model."
SD2_TEXT_PREFIX = "cond_stage_model.model."
LATENT_SCALE = 0.18215
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


class TokenizerNotFoundError(FileNotFoundError):
    """No CLIP tokenizer files were given or found."""


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


def _describe_keys(keys: Sequence[str]) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        head = ".".join(k.split(".")[:2]) if k.count(".") >= 2 else k.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{g}.* ({n})" for g, n in top) or "no tensors"


def _sub(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


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
                                    f"supported (keys: {_describe_keys(keys)})")
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise UnsupportedModelError(f"{path.name}: no {LDM_UNET_PREFIX}* UNet weights, so this is not an SD1.x/SD2.x "
                                    f"single-file checkpoint (found {_describe_keys(keys)}; UNet-only, LoRA or "
                                    f"diffusers-layout files are not read here)")
    is_sd2 = any(k.startswith(SD2_TEXT_PREFIX) for k in keys)
    if not is_sd2 and not any(k.startswith(SD1_TEXT_PREFIX) for k in keys):
        raise UnsupportedModelError(f"{path.name}: no text encoder ({SD1_TEXT_PREFIX}* for SD1 or {SD2_TEXT_PREFIX}* "
                                    f"for SD2); found {_describe_keys(keys)}")
    kind = "sd2" if is_sd2 else "sd1"

    raw_unet = strip_ldm_prefix(_sub(tensors, LDM_UNET_PREFIX))
    unet_config = detect_unet_config(raw_unet)
    unet = unet_from_ldm(raw_unet, unet_config, dtype=dtype)
    used = set(unet_to_ldm(unet))
    sha = unet_hash({k: v for k, v in raw_unet.items() if k in used})
    del raw_unet

    vae = vae_from_ldm(_sub(tensors, VAE_PREFIX), dtype=dtype, name=path.name)
    if kind == "sd2":
        text_encoder = text_encoder_from_open_clip(_sub(tensors, SD2_TEXT_PREFIX), dtype=dtype, name=path.name)
    else:
        text_encoder = text_encoder_from_ldm(_sub(tensors, SD1_TEXT_PREFIX), dtype=dtype, name=path.name)
    hidden = text_encoder.config.hidden_size
    if unet_config["context_dim"] != hidden:
        raise UnsupportedModelError(f"{path.name}: UNet cross-attention width {unet_config['context_dim']} does not "
                                    f"match the text encoder width {hidden}")

    tiny = meta.get(TINY_MARKER) == "1"
    tokenizer = load_tokenizer(tokenizer_dir, kind=kind, tiny=tiny)
    _check_tokenizer_fits(tokenizer, text_encoder, path)
    alphas = _alphas_cumprod(tensors.get("alphas_cumprod"), path)
    pred = _resolve_prediction_type(prediction_type, kind, meta, "v_pred" in tensors, path)
    comps = SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, prediction_type=pred,
                         alphas_cumprod=alphas, kind=kind, sha256_short=sha, latent_scale=LATENT_SCALE,
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
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_VAE_RESNET[name]}.{tail}"


def _vae_attn(rest: str) -> str:
    for diff, ldm in _VAE_ATTN.items():
        if rest.startswith(diff + "."):
            return ldm + rest[len(diff):]
    raise KeyError(rest)


def vae_ldm_key_for(key: str, n_levels: int) -> str:
    """LDM key (without ``first_stage_model.``) of diffusers ``AutoencoderKL`` key ``key`` for ``n_levels`` levels.

    Both conversion directions are built from this one mapping.
    """
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise KeyError(key)
    try:
        if rest.startswith("conv_norm_out."):
            return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"
        if rest.startswith(("conv_in.", "conv_out.")):
            return key
        m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", rest)
        if m:
            if m[1] == "resnets":
                return f"{part}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
            return f"{part}.mid.attn_{int(m[2]) + 1}.{_vae_attn(m[3])}"
        m = re.match(r"down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", rest)
        if m and part == "encoder":
            if m[2] == "downsamplers":
                return f"encoder.down.{m[1]}.downsample.{m[4]}"
            return f"encoder.down.{m[1]}.block.{m[3]}.{_vae_resnet(m[4])}"
        m = re.match(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", rest)
        if m and part == "decoder":
            level = n_levels - 1 - int(m[1])  # LDM numbers decoder levels by resolution, diffusers by order of use
            if m[2] == "upsamplers":
                return f"decoder.up.{level}.upsample.{m[4]}"
            return f"decoder.up.{level}.block.{m[3]}.{_vae_resnet(m[4])}"
    except KeyError:
        pass
    raise KeyError(f"no LDM name for diffusers VAE key {key!r}")


def vae_config_from_ldm(state_dict: Mapping[str, torch.Tensor], name: str = "state dict") -> dict[str, Any]:
    """``AutoencoderKL`` config read off LDM VAE weights (keys with or without ``first_stage_model.``)."""
    sd = _strip(state_dict, VAE_PREFIX)
    need = ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight", "encoder.down.0.block.0"
            ".conv1.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise UnsupportedModelError(f"{name}: no LDM KL-autoencoder weights ({VAE_PREFIX}{missing[0]} missing; "
                                    f"found {_describe_keys(list(sd))})")
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    nrb = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    channels = []
    for i in range(n):
        w = sd.get(f"encoder.down.{i}.block.0.conv1.weight")
        if w is None:
            raise UnsupportedModelError(f"{name}: unexpected VAE layout, no encoder.down.{i}.block.0.conv1.weight")
        channels.append(int(w.shape[0]))
    if any(c % 32 for c in channels):
        raise UnsupportedModelError(f"{name}: VAE channels {channels} are not multiples of 32 (GroupNorm groups)")
    return {
        "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": channels,
        "layers_per_block": nrb,
        "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": LATENT_SCALE,
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sd,
    }


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if any(k.startswith(prefix) for k in state_dict):
        return _sub(state_dict, prefix)
    return dict(state_dict)


def _assign(model: torch.nn.Module, target_to_value: dict[str, torch.Tensor], name: str) -> None:
    """Load ``target_to_value`` into a meta-device ``model`` (reshaping 1x1 convs <-> linears), checking shapes."""
    target = model.state_dict()
    for key, value in list(target_to_value.items()):
        want = target[key].shape
        if value.shape != want:
            if value.numel() == target[key].numel() and value.dim() in (2, 4) and len(want) in (2, 4):
                target_to_value[key] = value.reshape(want)
            else:
                raise UnsupportedModelError(f"{name}: weight for {key!r} has shape {tuple(value.shape)}, the config "
                                            f"read off the weights expects {tuple(want)}")
    model.load_state_dict(target_to_value, assign=True, strict=True)


def _check_no_meta(model: torch.nn.Module, name: str) -> None:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{name}: internal error, tensors left uninitialised after loading: {left[:3]}")


def vae_from_ldm(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                 name: str = "state dict") -> AutoencoderKL:
    """Build a diffusers ``AutoencoderKL`` from LDM VAE weights (``first_stage_model.`` prefix optional).

    LDM stores the mid-block attention projections as 1x1 convs ``[C, C, 1, 1]``; they become linears ``[C, C]``.
    """
    sd = _strip(state_dict, VAE_PREFIX)
    config = vae_config_from_ldm(sd, name)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    n = len(config["block_out_channels"])
    values, missing = {}, []
    for key in vae.state_dict():
        ldm = vae_ldm_key_for(key, n)
        if ldm not in sd:
            missing.append(VAE_PREFIX + ldm)
            continue
        values[key] = sd[ldm].to(dtype) if dtype is not None else sd[ldm]
    if missing:
        raise UnsupportedModelError(f"{name}: VAE lacks {len(missing)} weights its layout needs, e.g. {missing[:3]}")
    unused = sorted(set(sd) - {vae_ldm_key_for(k, n) for k in values})
    if unused:
        logger.warning("%s: ignoring %d unexpected VAE keys, e.g. %s", name, len(unused), unused[:3])
    _assign(vae, values, name)
    _check_no_meta(vae, name)
    return vae.eval()


def vae_to_ldm(vae: AutoencoderKL, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of :func:`vae_from_ldm`: LDM-layout weights (attention projections as 1x1 convs), keys prefixed."""
    n = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = vae_ldm_key_for(key, n)
        if ".mid.attn_" in ldm and ldm.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[prefix + ldm] = value
    return out


# ------------------------------------------------------------------------------------------------------ text encoders
def _text_core(model: CLIPTextModel) -> torch.nn.Module:
    """transformers 4.x nests the modules under ``text_model``; 5.x keeps them on the model itself."""
    return getattr(model, "text_model", model)


def _model_key(model: CLIPTextModel, bare: str) -> str:
    return f"text_model.{bare}" if hasattr(model, "text_model") else bare


def _clip_config(bare: Mapping[str, torch.Tensor], act: str, num_heads: int | None, name: str) -> CLIPTextConfig:
    need = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "encoder.layers.0.mlp.fc1"
            ".weight", "final_layer_norm.weight")
    missing = [k for k in need if k not in bare]
    if missing:
        raise UnsupportedModelError(f"{name}: text encoder lacks {missing[0]} (found {_describe_keys(list(bare))})")
    vocab, hidden = bare["embeddings.token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in bare if k.startswith("encoder.layers."))
    if num_heads is None:
        if hidden % 64:
            raise UnsupportedModelError(f"{name}: text width {hidden} is not a multiple of the 64-wide CLIP heads")
        num_heads = hidden // 64
    return CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers, num_attention_heads=num_heads,
        intermediate_size=int(bare["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_position_embeddings=int(bare["embeddings.position_embedding.weight"].shape[0]), hidden_act=act,
        bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1, pad_token_id=int(vocab) - 1,
    )


def _build_text(bare: dict[str, torch.Tensor], act: str, dtype: torch.dtype | None, num_heads: int | None,
                name: str, ignorable: tuple[str, ...]) -> CLIPTextModel:
    config = _clip_config(bare, act, num_heads, name)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    targets = set(model.state_dict())
    values, missing = {}, []
    for key in targets:
        b = key.removeprefix("text_model.")
        if b not in bare:
            missing.append(b)
            continue
        values[key] = bare[b].to(dtype) if dtype is not None else bare[b]
    if missing:
        raise UnsupportedModelError(f"{name}: text encoder lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    unused = sorted(k for k in set(bare) - {k.removeprefix("text_model.") for k in targets}
                    if not k.endswith(ignorable))
    if unused:
        logger.warning("%s: ignoring %d unexpected text-encoder keys, e.g. %s", name, len(unused), unused[:3])
    _assign(model, values, name)
    core = _text_core(model)
    core.embeddings.position_ids = torch.arange(config.max_position_embeddings).unsqueeze(0)  # non-persistent buffer
    _check_no_meta(model, name)
    return model.eval()


def text_encoder_from_ldm(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                          num_heads: int | None = None, name: str = "state dict") -> CLIPTextModel:
    """SD1 text encoder: ``cond_stage_model.transformer.[text_model.]*`` -> ``CLIPTextModel`` (``quick_gelu``).

    The config (width, layers, heads = width / 64 unless ``num_heads``, MLP width, vocab, positions) comes from the
    weight shapes.
    """
    sd = _strip(state_dict, SD1_TEXT_PREFIX)
    bare = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return _build_text(bare, "quick_gelu", dtype, num_heads, name, ("position_ids",))


def text_encoder_to_ldm(model: CLIPTextModel, prefix: str = SD1_TEXT_WRITE_PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of :func:`text_encoder_from_ldm`: SD1 checkpoint keys (``...transformer.text_model.*``)."""
    return {prefix + k.removeprefix("text_model."): v for k, v in model.state_dict().items()}


_OPEN_CLIP_LAYER = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.",
                    "mlp.c_proj.": "mlp.fc2.", "attn.out_proj.": "self_attn.out_proj."}
_OPEN_CLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")


def open_clip_to_hf_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-transformer keys (prefix ``cond_stage_model.model.`` optional) -> bare ``CLIPTextModel`` keys.

    The fused ``attn.in_proj_weight`` ``[3D, D]`` (rows: q, k, v, as ``torch.nn.MultiheadAttention`` uses them) is
    split into ``q_proj``, ``k_proj``, ``v_proj``; ``text_projection`` and the vision tower are not needed and dropped.
    """
    sd = _strip(state_dict, SD2_TEXT_PREFIX)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final."):]] = value
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            pre, rest = f"encoder.layers.{m[1]}.", m[2]
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if value.shape[0] % 3:
                    raise UnsupportedModelError(f"OpenCLIP {key} has {value.shape[0]} rows, not 3 x width")
                for proj, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{pre}self_attn.{proj}_proj.{kind}"] = part.clone()
                continue
            for old, new in _OPEN_CLIP_LAYER.items():
                if rest.startswith(old):
                    out[pre + new + rest[len(old):]] = value
                    break
            else:
                out["unmapped." + key] = value
        elif key.startswith(_OPEN_CLIP_IGNORED) or key.startswith("visual."):
            continue
        else:
            out["unmapped." + key] = value
    return out


def text_encoder_from_open_clip(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                                num_heads: int | None = None, name: str = "state dict") -> CLIPTextModel:
    """SD2 text encoder: OpenCLIP ``cond_stage_model.model.*`` -> ``CLIPTextModel`` with exact ``gelu``.

    Heads default to width / 64 (ViT-H/14: 1024 / 64 = 16). Use ``text_layer=-2`` with it (see :func:`encode_tokens`).
    """
    return _build_text(open_clip_to_hf_keys(state_dict), "gelu", dtype, num_heads, name, ())


# --------------------------------------------------------------------------------------------------------- tokenizers
def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2 / CLIP) uses for the bytes 0..255, in CLIP's vocab order:
    printable Latin-1 bytes map to themselves, the other 68 bytes to code points 256, 257, ..."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    kept = set(keep)
    rest = [b for b in range(256) if b not in kept]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_byte_tokenizer(folder: str | os.PathLike) -> Path:
    """Write a CLIP-compatible byte-level tokenizer (``vocab.json`` + ``merges.txt``) to ``folder``.

    Vocab (514 entries): the 256 byte characters, the same with ``</w>`` (end of word), ``<|startoftext|>`` (512) and
    ``<|endoftext|>`` (513); no merges, so every character is one token. It is the tiny model's tokenizer.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _from_folder(folder: Path, kind: str) -> CLIPTokenizer:
    # OpenCLIP (SD2) pads with token 0 ("!"), OpenAI CLIP (SD1) with <|endoftext|>.
    extra = {"pad_token": "!"} if kind == "sd2" else {}
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=77, **extra)


def byte_tokenizer(kind: str = "sd1") -> CLIPTokenizer:
    """The built-in byte-level tokenizer (see :func:`write_byte_tokenizer`), generated into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="tunevideo-tok-") as tmp:
        return _from_folder(write_byte_tokenizer(tmp), kind)


def _tokenizer_files_ok(folder: Path) -> bool:
    bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return bpe or (folder / "tokenizer.json").is_file()


_HOW_TO_TOKENIZER = ("pass tokenizer_dir=<folder with vocab.json and merges.txt> (CLI: --tokenizer), e.g. ComfyUI's "
                     "comfy/sd1_tokenizer, or set COMFYUI_PATH to a ComfyUI checkout")


def load_tokenizer(tokenizer_dir: str | os.PathLike | None = None, kind: str = "sd1",
                   tiny: bool = False) -> CLIPTokenizer:
    """The CLIP BPE tokenizer, from local files only.

    Order: the built-in byte tokenizer for tiny models; ``tokenizer_dir``; ``$COMFYUI_PATH/comfy/sd1_tokenizer``
    (SD1 and SD2 share that vocabulary). Raises :class:`TokenizerNotFoundError` saying how to provide one.
    """
    if tiny:
        if tokenizer_dir is not None:
            logger.info("tiny built-in model: using its built-in byte tokenizer, not %s", tokenizer_dir)
        return byte_tokenizer(kind)
    if tokenizer_dir is not None:
        folder = Path(tokenizer_dir)
        if not folder.is_dir() or not _tokenizer_files_ok(folder):
            raise TokenizerNotFoundError(f"tokenizer_dir {folder} is not a folder with vocab.json and merges.txt "
                                         f"(or tokenizer.json)")
        return _from_folder(folder, kind)
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy:
        folder = Path(comfy) / "comfy" / "sd1_tokenizer"
        if folder.is_dir() and _tokenizer_files_ok(folder):
            return _from_folder(folder, kind)
        raise TokenizerNotFoundError(f"COMFYUI_PATH is set but {folder} has no vocab.json + merges.txt; "
                                     f"{_HOW_TO_TOKENIZER}")
    raise TokenizerNotFoundError(f"no CLIP tokenizer available offline: {_HOW_TO_TOKENIZER}")


def _check_tokenizer_fits(tokenizer: Any, text_encoder: CLIPTextModel, path: Path) -> None:
    try:
        size = len(tokenizer)
    except TypeError:
        return  # a plain callable: checked per call in tokenize()
    vocab = text_encoder.config.vocab_size
    if size > vocab:
        raise ValueError(f"{path.name}: the tokenizer has {size} tokens but the text encoder only {vocab}; "
                         f"it is the wrong tokenizer for this checkpoint")


def tokenize(tokenizer: Any, prompts: Sequence[str], length: int = 77) -> torch.Tensor:
    """``input_ids`` ``[B, length]`` (int64): padded to ``length``, longer prompts truncated (end token kept)."""
    out = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    ids = out if isinstance(out, torch.Tensor) else out["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.shape != (len(prompts), length):
        raise ValueError(f"tokenizer returned input_ids of shape {tuple(ids.shape)}, expected "
                         f"({len(prompts)}, {length})")
    return ids


# ---------------------------------------------------------------------------------------------------------- encoding
def encode_tokens(text_encoder: CLIPTextModel, input_ids: torch.Tensor, text_layer: int = -1) -> torch.Tensor:
    """Text conditioning ``[B, N, D]`` from ``input_ids`` ``[B, N]``.

    ``text_layer=-1``: the last layer's output after the final layer norm (SD1). ``-2``: the penultimate layer's
    output, then the final layer norm (SD2). No attention mask: SD attends over the padding too.
    """
    vocab = text_encoder.config.vocab_size
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise ValueError(f"token ids span [{int(input_ids.min())}, {int(input_ids.max())}], outside the text "
                         f"encoder's vocabulary of {vocab}")
    device = next(text_encoder.parameters()).device
    ids = input_ids.to(device)
    with torch.no_grad():
        if text_layer == -1:
            return text_encoder(input_ids=ids).last_hidden_state
        hidden = text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[text_layer]
        return _text_core(text_encoder).final_layer_norm(hidden)


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
        vocab = len(_byte_chars()) * 2 + 2
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
