"""Engine entry points that chain conversion, inflation, tuning, inversion and sampling.

Tune-A-Video (Wu et al., ICCV 2023), Fig. 2: inflate -> one-shot tune -> DDIM-invert the source -> DDIM-sample the
edited prompt. Node faces and the headless CLI call these; they never import a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .convert.identity import base_identity
from .convert.unet import unet_from_ldm
from .defaults import SD_LATENT_SCALE
from .networks.animatediff import build_motion_unet
from .networks.inflate import inflate_unet
from .sampling.schedule import NoiseSchedule
from .video_unet import VideoUNet


def video_model_from_ldm(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any],
                         schedule: NoiseSchedule, latent_scale: float = SD_LATENT_SCALE,
                         dtype: torch.dtype | None = None, attention: str = "tune-a-video",
                         attention_options: dict | None = None, temporal: str = "tune-a-video") -> VideoUNet:
    """LDM UNet weights (+ ComfyUI ``unet_config``) -> inflated :class:`VideoUNet` (``attention``: see
    :data:`~.inflate.ATTENTION_VARIANTS`, with ``attention_options``; ``temporal``:
    :data:`~.inflate.TEMPORAL_VARIANTS`).

    The converted UNet's tensors are the ones in ``state_dict`` (no copy unless ``dtype`` differs).
    """
    unet2d = unet_from_ldm(state_dict, unet_config, dtype=dtype)
    unet = inflate_unet(unet2d, attention=attention, attention_options=attention_options, temporal=temporal)
    return VideoUNet(network=unet, schedule=schedule, latent_scale=latent_scale, **base_identity(state_dict))


def video_model_with_motion(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any],
                            schedule: NoiseSchedule, motion_module: Mapping[str, torch.Tensor], name: str,
                            latent_scale: float = SD_LATENT_SCALE, dtype: torch.dtype | None = None) -> VideoUNet:
    """LDM UNet weights + an original-layout AnimateDiff motion module -> :class:`VideoUNet` on the AnimateDiff base
    (:class:`~.animatediff.MotionUNet`; 2D tensors are ``state_dict``'s, no copy unless ``dtype`` differs)."""
    unet2d = unet_from_ldm(state_dict, unet_config, dtype=dtype)
    return VideoUNet(network=build_motion_unet(unet2d, motion_module, name), schedule=schedule,
                      latent_scale=latent_scale, **base_identity(state_dict))


def video_model_from_checkpoint(components) -> VideoUNet:
    """A loaded single-file checkpoint (:class:`~.single_file.SDComponents`) -> inflated :class:`VideoUNet`."""
    return VideoUNet(network=inflate_unet(components.unet), schedule=components.schedule,
                      latent_scale=components.latent_scale, base_hash=components.sha256_short,
                      base_fingerprint=components.fingerprint)


def encode_frames(vae, frames: torch.Tensor, scale: float, chunk: int = 8) -> torch.Tensor:
    """``[F, H, W, 3]`` in 0..1 -> scaled latents ``[1, 4, F, H/8, W/8]`` (VAE posterior mean, chunked)."""
    dev, dtype = vae.device, vae.dtype
    out = []
    with torch.no_grad():
        for part in frames.split(chunk):
            x = part.permute(0, 3, 1, 2).to(dev, dtype) * 2 - 1
            out.append(vae.encode(x).latent_dist.mean.float())
    lat = torch.cat(out) * scale
    return lat.permute(1, 0, 2, 3)[None]


def decode_latents(vae, latents: torch.Tensor, scale: float, chunk: int = 8) -> torch.Tensor:
    """Scaled latents ``[1, 4, F, h, w]`` -> frames ``[F, 8h, 8w, 3]`` in 0..1."""
    dev, dtype = vae.device, vae.dtype
    frames = []
    with torch.no_grad():
        for part in (latents[0].permute(1, 0, 2, 3) / scale).split(chunk):
            img = vae.decode(part.to(dev, dtype)).sample.float()
            frames.append(((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
    return torch.cat(frames)
