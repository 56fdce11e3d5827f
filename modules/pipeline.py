"""Engine entry points that chain conversion, inflation, tuning, inversion and sampling.

Tune-A-Video (Wu et al., ICCV 2023), Fig. 2: inflate -> one-shot tune -> DDIM-invert the source -> DDIM-sample the
edited prompt. Node faces and the headless CLI call these; they never import a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint_io import unet_hash
from .convert import unet_from_ldm
from .inflate import inflate_unet
from .schedule import NoiseSchedule
from .video_model import SD_LATENT_SCALE, VideoModel


def video_model_from_ldm(state_dict: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any],
                         schedule: NoiseSchedule, latent_scale: float = SD_LATENT_SCALE,
                         dtype: torch.dtype | None = None) -> VideoModel:
    """LDM UNet weights (+ ComfyUI ``unet_config``) -> inflated :class:`VideoModel`.

    The converted UNet's tensors are the ones in ``state_dict`` (no copy unless ``dtype`` differs).
    """
    unet2d = unet_from_ldm(state_dict, unet_config, dtype=dtype)
    return VideoModel(unet=inflate_unet(unet2d), schedule=schedule, latent_scale=latent_scale,
                      base_hash=unet_hash(state_dict))
