"""LDM KL autoencoder (``first_stage_model.*``) <-> diffusers ``AutoencoderKL``.

Stable Diffusion's VAE (Rombach et al., CVPR 2022) in the original LDM layout: ``encoder.down.{i}.block.{j}``,
``mid.attn_1.{q,k,v,proj_out}`` with 1x1-conv attention weights, ``nin_shortcut``... The config is read off the
weight shapes; one key map (:func:`vae_ldm_key_for`) serves both directions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL

from ..defaults import SD_LATENT_SCALE
from .state_dict import assign_weights, check_no_meta, describe_keys, strip_prefix
from .unet import UnsupportedModelError

logger = logging.getLogger(__name__)

VAE_PREFIX = "first_stage_model."

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
    sd = strip_prefix(state_dict, VAE_PREFIX)
    need = ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight", "encoder.down.0.block.0"
            ".conv1.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise UnsupportedModelError(f"{name}: no LDM KL-autoencoder weights ({VAE_PREFIX}{missing[0]} missing; "
                                    f"found {describe_keys(list(sd))})")
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
        "scaling_factor": SD_LATENT_SCALE,
        "use_quant_conv": "quant_conv.weight" in sd,
        "use_post_quant_conv": "post_quant_conv.weight" in sd,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in sd,
    }


def vae_from_ldm(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                 name: str = "state dict") -> AutoencoderKL:
    """Build a diffusers ``AutoencoderKL`` from LDM VAE weights (``first_stage_model.`` prefix optional).

    LDM stores the mid-block attention projections as 1x1 convs ``[C, C, 1, 1]``; they become linears ``[C, C]``.
    """
    sd = strip_prefix(state_dict, VAE_PREFIX)
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
    assign_weights(vae, values, name)
    check_no_meta(vae, name)
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
