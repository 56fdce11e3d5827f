"""A tiny random-weight Stable Diffusion 1.x model in the real single-file layout, for the demo and the tests.

One config for every tiny model the pack builds (:data:`TINY_UNET_CONFIG`, ComfyUI ``unet_config`` form): the demo's
checkpoint, the CLI self-check and the test suite's UNets. Weights are random, so images made with it are noise;
what it proves is that conversion, inflation, tuning, inversion, sampling and saving run and agree.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from .modules.convert.checkpoint import TINY_MARKER
from .modules.convert.identity import unet_hash
from .modules.convert.text_encoder import byte_chars, text_encoder_to_ldm
from .modules.convert.unet import LDM_UNET_PREFIX, diffusers_config_from_unet_config, unet_to_ldm
from .modules.convert.vae import vae_to_ldm
from .modules.defaults import SD_LATENT_SCALE
from .modules.files.atomic import atomic_write
from .modules.networks.animatediff import ADAPTER_CONFIGS, to_original
from .modules.sampling.schedule import NoiseSchedule

logger = logging.getLogger(__name__)

#: Safetensors metadata key that makes :func:`~.single_file.load_checkpoint` use the built-in byte tokenizer.

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


def perturb_norms(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Random GroupNorm/LayerNorm affine parameters, so tests notice swapped or missing norm weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(scale * torch.randn_like(p))


def tiny_unet2d(unet_config: dict[str, Any] | None = None, seed: int = 0) -> UNet2DConditionModel:
    """A random diffusers UNet for ``unet_config`` (default :data:`TINY_UNET_CONFIG`) with non-trivial norms, in eval
    mode. The global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(unet_config or TINY_UNET_CONFIG))
        perturb_norms(unet)
    return unet.eval()


def tiny_modules(seed: int = 0) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The tiny random SD1-layout UNet, VAE (8x downsampling, 4 latent channels) and CLIP text encoder (vocab 514).

    The global RNG state is left untouched.
    """
    n = len(TINY_VAE["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**diffusers_config_from_unet_config(TINY_UNET_CONFIG))
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                            norm_num_groups=32, sample_size=512, scaling_factor=SD_LATENT_SCALE, **TINY_VAE)
        vocab = len(byte_chars()) * 2 + 2
        text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, num_attention_heads=TINY_TEXT["hidden_size"] // 64,
                                            hidden_act="quick_gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                            pad_token_id=vocab - 1, **TINY_TEXT))
        for m in (unet, vae, text):
            perturb_norms(m)
    return unet.eval(), vae.eval(), text.eval()


def tiny_motion_module(version: str = "v2", seed: int = 0,
                       unet_config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """A random AnimateDiff motion module (``version`` v1/v2/v3) for the tiny UNet (or ``unet_config``'s), in the
    original key layout of the published files. Every weight is random (the published init zeroes ``proj_out``, which
    would hide the module). The global RNG state is left untouched."""
    from diffusers import MotionAdapter

    cfg = diffusers_config_from_unet_config(unet_config or TINY_UNET_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(block_out_channels=tuple(cfg["block_out_channels"]),
                                motion_layers_per_block=cfg["layers_per_block"], **ADAPTER_CONFIGS[version])
        with torch.no_grad():
            for name, p in adapter.named_parameters():
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name and name.endswith("weight")
                        else 0.2 * torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
    return {k: v.contiguous() for k, v in to_original(adapter.state_dict()).items()}


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
