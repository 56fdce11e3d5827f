"""ComfyUI / LDM UNet <-> diffusers ``UNet2DConditionModel``.

Stable Diffusion 1.x and 2.x UNets (Rombach et al., CVPR 2022) reach this pack in the original LDM layout:
ComfyUI's ``model.model.diffusion_model.state_dict()`` (keys ``input_blocks.*``, ``middle_block.*``,
``output_blocks.*``, ``time_embed.*``, ``out.*``) together with its ``unet_config`` dict, or a single-file
checkpoint whose UNet keys carry the ``model.diffusion_model.`` prefix. The engine works on diffusers modules, so this
file derives the diffusers config from ``unet_config`` (nothing about SD1.5's sizes is hard-coded) and renames keys.

One function, :func:`ldm_key_for`, maps a diffusers key to its LDM key; both directions are built from it, so loading
and writing (tiny test checkpoints, headless use) cannot drift apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

LDM_UNET_PREFIX = "model.diffusion_model."

#: unet_config keys that mark architectures this pack does not handle, with a human name for the error.
_UNSUPPORTED_MARKERS = {
    "image_model": "a non-UNet diffusion model (e.g. SD3, Flux, Hunyuan, Wan, ...)",
    "use_temporal_attention": "a video UNet (e.g. SVD)",
    "use_temporal_resblock": "a video UNet (e.g. SVD)",
}


class UnsupportedModelError(ValueError):
    """The model is not an SD1.x/SD2.x-style UNet that this pack can inflate."""


SUPPORTED = "SD1.x / SD2.x UNets (context_dim 768 or 1024 in the originals; any sizes of that layout)"


def _levels(unet_config: Mapping[str, Any]) -> tuple[int, int]:
    channel_mult = list(unet_config["channel_mult"])
    nrb = unet_config["num_res_blocks"]
    nrb_list = [nrb] * len(channel_mult) if isinstance(nrb, int) else list(nrb)
    if len(set(nrb_list)) != 1:
        raise UnsupportedModelError(
            f"unet_config.num_res_blocks={nrb_list}: per-level counts differ; supported: {SUPPORTED}"
        )
    return len(channel_mult), nrb_list[0]


def check_supported(unet_config: Mapping[str, Any]) -> None:
    """Raise :class:`UnsupportedModelError` naming what was found unless ``unet_config`` is SD1.x/SD2.x-like."""
    if not isinstance(unet_config, Mapping):
        raise UnsupportedModelError(f"unet_config must be a dict, got {type(unet_config).__name__}")
    for key, what in _UNSUPPORTED_MARKERS.items():
        if unet_config.get(key):
            raise UnsupportedModelError(f"unet_config has {key}={unet_config[key]!r}: this is {what}; "
                                        f"supported: {SUPPORTED}")
    missing = [k for k in ("model_channels", "channel_mult", "num_res_blocks", "context_dim") if k not in unet_config]
    if missing:
        raise UnsupportedModelError(f"unet_config lacks {missing}: not an SD-style UNet; supported: {SUPPORTED}")
    if unet_config.get("adm_in_channels"):
        name = "SDXL" if unet_config.get("context_dim") == 2048 else "a class/ADM-conditioned UNet (SDXL, unCLIP)"
        raise UnsupportedModelError(
            f"unet_config has adm_in_channels={unet_config['adm_in_channels']} and "
            f"context_dim={unet_config.get('context_dim')}: this is {name}; supported: {SUPPORTED}"
        )
    n_levels, nrb = _levels(unet_config)
    depth = list(unet_config.get("transformer_depth", []))
    if len(depth) != n_levels * nrb:
        raise UnsupportedModelError(
            f"unet_config.transformer_depth has {len(depth)} entries, expected {n_levels * nrb}; "
            f"supported: {SUPPORTED}"
        )
    if any(d > 1 for d in depth) or unet_config.get("transformer_depth_middle", 1) > 1:
        raise UnsupportedModelError(
            f"unet_config.transformer_depth={depth}: several transformer blocks per level is SDXL-style; "
            f"supported: {SUPPORTED}"
        )
    if unet_config.get("in_channels", 4) != 4 or unet_config.get("out_channels", 4) != 4:
        raise UnsupportedModelError(
            f"unet_config in/out channels {unet_config.get('in_channels')}/{unet_config.get('out_channels')}: "
            f"inpainting or other special UNets are not supported; supported: {SUPPORTED}"
        )


def diffusers_config_from_unet_config(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """Derive a ``UNet2DConditionModel`` config from ComfyUI's ``unet_config`` dict.

    Heads: SD1.x sets ``num_heads`` (fixed count), SD2.x sets ``num_head_channels`` (fixed width, count grows with
    channels). diffusers' ``attention_head_dim`` is, for historical reasons, the *number of heads* per level.
    """
    check_supported(unet_config)
    n_levels, nrb = _levels(unet_config)
    mc = int(unet_config["model_channels"])
    channels = [mc * int(m) for m in unet_config["channel_mult"]]
    depth = list(unet_config["transformer_depth"])
    has_attn = [depth[i * nrb] > 0 for i in range(n_levels)]
    head_ch = unet_config.get("num_head_channels", -1)
    if head_ch is not None and head_ch > 0:
        heads = [c // head_ch for c in channels]
    else:
        heads = [int(unet_config["num_heads"])] * n_levels
    return {
        "sample_size": int(unet_config.get("image_size", 64)),
        "in_channels": int(unet_config.get("in_channels", 4)),
        "out_channels": int(unet_config.get("out_channels", 4)),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)],
        "block_out_channels": channels,
        "layers_per_block": nrb,
        "cross_attention_dim": int(unet_config["context_dim"]),
        "attention_head_dim": heads,
        "use_linear_projection": bool(unet_config.get("use_linear_in_transformer", False)),
        # SD2.x (head-channel layout) overflows in fp16 without fp32 attention scores, as in its diffusers config.
        "upcast_attention": bool(head_ch is not None and head_ch > 0),
        "norm_num_groups": 32 if all(c % 32 == 0 for c in channels) else _fail_groups(channels),
    }


def _fail_groups(channels):
    raise UnsupportedModelError(f"block channels {channels} are not multiples of 32 (GroupNorm groups)")


_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESNET_INV = {v: k for k, v in _RESNET.items()}


def _resnet_part(rest: str) -> str:
    name, _, tail = rest.partition(".")
    if name not in _RESNET_INV:
        raise KeyError(rest)
    return f"{_RESNET_INV[name]}.{tail}"


def ldm_key_for(key: str, config: Mapping[str, Any]) -> str:
    """Return the LDM (ComfyUI ``diffusion_model``) key of diffusers UNet key ``key`` under ``config``."""
    nrb = config["layers_per_block"]
    has_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    fixed = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2"}
    for diff_name, ldm_name in fixed.items():
        if key.startswith(diff_name + "."):
            return ldm_name + key[len(diff_name):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + i * (nrb + 1) + nrb}.0.op.{rest.removeprefix('conv.')}"
        blk = 1 + i * (nrb + 1) + j
        return f"input_blocks.{blk}.0.{_resnet_part(rest)}" if kind == "resnets" else f"input_blocks.{blk}.1.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{_resnet_part(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        level_has_attn = list(reversed(has_attn))[i]
        if kind == "upsamplers":
            return f"output_blocks.{i * (nrb + 1) + nrb}.{2 if level_has_attn else 1}.{rest}"
        blk = i * (nrb + 1) + j
        return f"output_blocks.{blk}.0.{_resnet_part(rest)}" if kind == "resnets" else f"output_blocks.{blk}.1.{rest}"
    raise KeyError(f"no LDM name for diffusers key {key!r}")


def strip_ldm_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept ComfyUI's bare ``diffusion_model`` keys or a raw checkpoint's ``model.diffusion_model.`` keys."""
    if any(k.startswith(LDM_UNET_PREFIX) for k in state_dict):
        return {k[len(LDM_UNET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LDM_UNET_PREFIX)}
    return dict(state_dict)


def _build_empty(config: Mapping[str, Any]) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def unet_from_ldm(
    state_dict: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    dtype: torch.dtype | None = None,
) -> UNet2DConditionModel:
    """Build a diffusers ``UNet2DConditionModel`` from an LDM-layout UNet state dict.

    Args:
        state_dict: ``diffusion_model`` keys (ComfyUI) or ``model.diffusion_model.``-prefixed keys (checkpoint file).
        unet_config: ComfyUI's ``model.model.model_config.unet_config``, or :func:`detect_unet_config`'s result.
        dtype: cast weights to this dtype (default: keep the state dict's dtype).
    Raises:
        UnsupportedModelError: the architecture is not SD1.x/SD2.x-like, or keys/shapes do not match it.
    """
    config = diffusers_config_from_unet_config(unet_config)
    sd = strip_ldm_prefix(state_dict)
    model = _build_empty(config)
    target = model.state_dict()
    converted, missing = {}, []
    for key, param in target.items():
        ldm = ldm_key_for(key, config)
        if ldm not in sd:
            missing.append(ldm)
            continue
        value = sd[ldm]
        if value.shape != param.shape:
            if value.numel() == param.numel() and value.dim() in (2, 4) and param.dim() in (2, 4):
                value = value.reshape(param.shape)  # 1x1 conv <-> linear projection (proj_in/out)
            else:
                raise UnsupportedModelError(
                    f"UNet weight {ldm!r} has shape {tuple(value.shape)} but the config derived from unet_config "
                    f"expects {tuple(param.shape)}; the unet_config does not describe this state dict"
                )
        converted[key] = value.to(dtype) if dtype is not None else value
    if missing:
        raise UnsupportedModelError(
            f"UNet state dict lacks {len(missing)} weights the config needs, e.g. {missing[:3]}; "
            f"it is not an SD1.x/SD2.x UNet matching unet_config"
        )
    unused = sorted(set(sd) - {ldm_key_for(k, config) for k in target})
    if unused:
        logger.warning("unet_from_ldm: ignoring %d unexpected UNet keys, e.g. %s", len(unused), unused[:3])
    model.load_state_dict(converted, assign=True)
    return model.eval()


def unet_to_ldm(unet: UNet2DConditionModel, prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of :func:`unet_from_ldm`: the LDM-layout state dict of a diffusers UNet, keys prefixed by ``prefix``."""
    config = dict(unet.config)
    return {prefix + ldm_key_for(k, config): v for k, v in unet.state_dict().items()}


def detect_unet_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read a ComfyUI-style ``unet_config`` off LDM UNet weights (for single-file checkpoints outside ComfyUI).

    Only the SD1.x/SD2.x layout is recognised; anything else raises :class:`UnsupportedModelError` naming what it saw.
    """
    sd = strip_ldm_prefix(state_dict)
    if "input_blocks.0.0.weight" not in sd:
        sample = sorted(sd)[:3]
        raise UnsupportedModelError(f"no LDM UNet found (no input_blocks.0.0.weight; keys start {sample}); "
                                    f"supported: {SUPPORTED}")
    if "label_emb.0.0.weight" in sd:
        raise UnsupportedModelError(f"UNet has label_emb (ADM conditioning: SDXL or unCLIP); supported: {SUPPORTED}")
    mc = sd["input_blocks.0.0.weight"].shape[0]
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    out_ch = sd["out.2.weight"].shape[0]
    n_inputs = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    down_ops = sorted(int(k.split(".")[1]) for k in sd if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k))
    n_levels = len(down_ops) + 1
    nrb = down_ops[0] - 1 if down_ops else n_inputs - 1
    mults, depth = [], []
    for i in range(n_levels):
        first = 1 + i * (nrb + 1)
        w = sd.get(f"input_blocks.{first}.0.out_layers.3.weight")
        if w is None:
            raise UnsupportedModelError(f"unexpected UNet layout at input_blocks.{first}; supported: {SUPPORTED}")
        mults.append(w.shape[0] // mc)
        for j in range(nrb):
            depth.append(1 if f"input_blocks.{first + j}.1.proj_in.weight" in sd else 0)
    proj = next(k for k in sd if k.endswith("proj_in.weight"))
    linear = sd[proj].dim() == 2
    ctx = next(v for k, v in sd.items() if k.endswith("attn2.to_k.weight")).shape[1]
    cfg = {
        "use_checkpoint": False, "image_size": 32, "in_channels": in_ch, "out_channels": out_ch,
        "model_channels": mc, "num_res_blocks": [nrb] * n_levels, "channel_mult": mults,
        "transformer_depth": depth, "transformer_depth_middle": 1, "use_linear_in_transformer": linear,
        "context_dim": ctx, "use_spatial_transformer": True, "adm_in_channels": None, "legacy": False,
    }
    # SD2.x uses 64-channel heads; SD1.x uses 8 heads. Weights cannot tell head count apart, so use the layout.
    if linear or ctx == 1024:
        cfg.update(num_heads=-1, num_head_channels=64)
    else:
        cfg.update(num_heads=8, num_head_channels=-1)
    return cfg
