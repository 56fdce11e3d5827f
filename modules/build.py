"""Engine entry points that chain conversion, inflation, tuning, inversion and sampling.

Tune-A-Video (Wu et al., ICCV 2023), Fig. 2: inflate -> one-shot tune -> DDIM-invert the source -> DDIM-sample the
edited prompt. Node faces and the headless CLI call these; they never import a host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


#: Frames per VAE batch of :func:`encode_frames` / :func:`decode_latents` (a 512x512 SD VAE decode of 8 frames
#: peaks near 5 GiB in fp16; ComfyUI's own VAE nodes batch by free memory in the same way).
VAE_BATCH = 8


def encode_frames(vae, frames: torch.Tensor, scale: float, chunk: int = VAE_BATCH,
                  callback: Callable[[int, int, dict], None] | None = None) -> torch.Tensor:
    """``[F, H, W, 3]`` in 0..1 -> scaled latents ``[1, 4, F, H/8, W/8]`` (VAE posterior mean), ``chunk`` frames per
    VAE call written into one preallocated result (on the CPU when ``frames`` is: a long clip's latents do not need
    to fit on the accelerator). ``callback(done, total, {})`` after each batch (raise from it to stop)."""
    dev, dtype = vae.device, vae.dtype
    n, out = frames.shape[0], None  # out: [F, c, h, w], frames as batch; returned as a [1, c, f, h, w] view
    with torch.no_grad():
        for i in range(0, n, chunk):
            x = frames[i:i + chunk].permute(0, 3, 1, 2).to(dev, dtype) * 2 - 1
            lat = vae.encode(x).latent_dist.mean.float()
            if out is None:
                out = torch.empty(n, *lat.shape[1:], device=frames.device)
            out[i:i + chunk] = lat * scale
            if callback is not None:
                callback(min(i + chunk, n), n, {})
    return out.permute(1, 0, 2, 3)[None]


def decode_latents(vae, latents: torch.Tensor, scale: float, chunk: int = VAE_BATCH,
                   callback: Callable[[int, int, dict], None] | None = None) -> torch.Tensor:
    """Scaled latents ``[1, 4, F, h, w]`` -> frames ``[F, 8h, 8w, 3]`` in 0..1 on the CPU, ``chunk`` frames per VAE
    call written into one preallocated result. ``callback(done, total, {})`` after each batch (raise to stop)."""
    dev, dtype = vae.device, vae.dtype
    n, frames = latents.shape[2], None
    with torch.no_grad():
        for i in range(0, n, chunk):
            part = latents[0, :, i:i + chunk].permute(1, 0, 2, 3) / scale
            img = ((vae.decode(part.to(dev, dtype)).sample.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
            if frames is None:
                frames = torch.empty(n, *img.shape[1:])
            frames[i:i + chunk] = img
            if callback is not None:
                callback(min(i + chunk, n), n, {})
    return frames
