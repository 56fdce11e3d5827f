"""Tune-A-Video one-shot tuning (Wu et al., ICCV 2023, Sec. 4.2 "One-shot tuning").

The denoising loss on the source clip's latents and prompt, every step on the clip as a video, updating only the
sparse-causal and cross-attention query projections and the temporal attention (``attn1.to_q``, ``attn2.to_q``,
``attn_temp``); the loop itself is the pack's shared one (:func:`~..training.tune.tune`). Presets: the paper's set
in every transformer block, or what the reference code effectively trains (mid + up blocks only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..defaults import TAV, TUNE_A_VIDEO_TRAINABLE
from ..training.tune import TuneConfig, tune
from ..video_unet import VideoUNet

#: What the reference code effectively trains: the same modules, but only in the mid and up blocks. It trains with
#: gradient checkpointing on torch 1.12, whose checkpoint is re-entrant: a checkpointed down block fed only by frozen
#: layers gives its parameters no gradient, so no down-block tensor ever learns (the mid block is not checkpointed and
#: every up block takes the mid block's output). Measured on the reference UNet3DConditionModel:
#: tests/fixtures/tav_reference/trainable_grads.json.
TUNE_A_VIDEO_REFERENCE_TRAINABLE = tuple(f"{blocks}.*{m}" for blocks in ("mid_block", "up_blocks")
                                         for m in TUNE_A_VIDEO_TRAINABLE)

#: Trainable-module presets: the paper's intent (every transformer block) and the reference code's effective
#: behaviour (mid + up blocks only, no backward through the down blocks).
TUNE_A_VIDEO_PRESETS = {"tune-a-video": TAV.trainable_modules,
                        "tune-a-video-reference": TUNE_A_VIDEO_REFERENCE_TRAINABLE}

#: The paper's tuning settings (configs/man-skiing.yaml, see :class:`~..defaults.TuneAVideoDefaults`).
TUNE_A_VIDEO_CONFIG = TuneConfig(trainable=TUNE_A_VIDEO_PRESETS["tune-a-video"], method="tune-a-video")


def tune_a_video(video_unet: VideoUNet, latents: torch.Tensor, context: torch.Tensor,
                 config: TuneConfig = TUNE_A_VIDEO_CONFIG, callback: Callable[[int, int, dict], None] | None = None,
                 device: torch.device | str | None = None, prompt: str = "") -> tuple[VideoUNet, list[float]]:
    """One-shot tune ``video_unet`` on one clip as a video. Returns ``(tuned VideoUNet, loss per step)``.

    ``latents``: ``[1,c,f,h,w]`` scaled source latents; ``context``: ``[1,n,d]`` source-prompt embeddings;
    ``config.trainable``: module patterns (a preset's value, e.g. ``TUNE_A_VIDEO_PRESETS["tune-a-video"]``);
    ``callback(step, total, info)`` after each step (raise from it to interrupt); ``prompt`` is recorded in the
    result's history. The input model is never modified.
    """
    return tune(video_unet, latents, context, config, device=device, callback=callback, prompt=prompt)
