"""Running a video network on a host's *frame batch*: the layout ComfyUI's samplers hand a diffusion model.

A core sampler sees a video LATENT as an image batch (frames as batch entries) and batches the conditionings it
evaluates along the same axis: cond and uncond (and every Conditioning (Combine) entry of the same area) become
``chunks`` copies of the latent batch, concatenated. A 2D UNet does not care; a video network must see each video
as one clip, or its temporal layers would attend across the prompt boundary (or across two videos in one latent).
:func:`video_frames` and :func:`run_frame_batch` recover the videos: the batch is ``chunks`` equal parts, each part
is one latent batch, and each latent batch holds ``len // frames_per_video`` videos of ``frames_per_video`` frames
(0: the whole part is one video). All videos run as clips of one batched call; the outputs are put back in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from .base import ControlResiduals

#: ``clip(x [V,c,f,h,w], t [V], context [V,n,d], residuals | None) -> [V,c,f,h,w]``: V videos through the network.
ClipFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ControlResiduals | None], torch.Tensor]


def video_frames(batch: int, chunks: int, frames_per_video: int = 0) -> int:
    """Frames of one video in a batch of ``batch`` frames made of ``chunks`` equal latent batches (videos are
    consecutive runs of that many frames)."""
    if chunks < 1 or batch % chunks:
        raise ValueError(f"a batch of {batch} frames is not {chunks} equal conditioning chunks")
    per_chunk = batch // chunks
    f = frames_per_video or per_chunk
    if per_chunk % f:
        raise ValueError(f"frames_per_video={frames_per_video} does not divide the latent batch of {per_chunk} "
                         f"frames; set it to the frame count of one video (0: the whole latent is one video)")
    return f


def _first_mixed_video(rows: torch.Tensor) -> int | None:
    """Index of the first video ``[v, f, ...]`` whose frames are not all equal to its first, or None."""
    mixed = (rows != rows[:, :1]).flatten(1).any(1)
    return int(mixed.nonzero()[0]) if bool(mixed.any()) else None


def run_frame_batch(clip: ClipFn, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    frames: int, residuals: ControlResiduals | None = None) -> torch.Tensor:
    """``x [B, c, h, w]`` (frames of all videos), ``timestep [B]``, ``context [B, n, d]``, ``residuals`` per frame
    -> the network's output ``[B, c, h, w]``, each run of ``frames`` frames (:func:`video_frames`) one clip of a
    single batched call ``clip(x [V, c, f, h, w], t [V], context [V, n, d], residuals)`` (as SampleVideo batches
    cond and uncond).

    Within a video every frame must share one timestep and one conditioning (ComfyUI's samplers give them that);
    per-frame prompts (prompt schedules) are refused rather than reduced to the first frame's.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a frame batch [B, c, h, w], got shape {tuple(x.shape)}")
    f = frames
    if x.shape[0] % f:
        raise ValueError(f"a frame batch of {x.shape[0]} is not whole videos of {f} frames")
    t = timestep.reshape(-1, f)
    bad = _first_mixed_video(t)
    if bad is not None:
        raise ValueError(f"frames {bad * f}..{bad * f + f - 1} of one video are at different noise levels "
                         f"{t[bad].unique().tolist()}; a video must be denoised as one clip")
    bad = _first_mixed_video(context.reshape(-1, f, *context.shape[1:]))
    if bad is not None:
        raise ValueError(f"frames {bad * f}..{bad * f + f - 1} of one video carry different conditioning "
                         f"(a per-frame prompt schedule?); the video UNet takes one prompt per clip")
    videos = rearrange(x, "(v f) c h w -> v c f h w", f=f)
    out = clip(videos, timestep[::f], context[::f], residuals)  # residuals are frame-major (v f) already
    return rearrange(out, "v c f h w -> (v f) c h w")
