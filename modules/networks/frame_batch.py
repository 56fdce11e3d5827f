"""Running a video network on a host's *frame batch*: the layout ComfyUI's samplers hand a diffusion model.

A core sampler sees a video LATENT as an image batch (frames as batch entries) and batches the conditionings it
evaluates along the same axis: cond and uncond (and every Conditioning (Combine) entry of the same area) become
``chunks`` copies of the latent batch, concatenated. A 2D UNet does not care; a video network must see each video
as one clip, or its temporal layers would attend across the prompt boundary (or across two videos in one latent).
:func:`run_frame_batch` recovers the videos: the batch is ``chunks`` equal parts, each part is one latent batch, and
each latent batch holds ``len // frames_per_video`` videos of ``frames_per_video`` frames (0: the whole part is one
video). Every video runs as one clip ``[1, c, f, h, w]``; the outputs are put back in place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from .base import ControlResiduals

#: ``clip(x [V,c,f,h,w], t [V], context [V,n,d], residuals | None) -> [V,c,f,h,w]``: V videos through the network.
ClipFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ControlResiduals | None], torch.Tensor]


def video_spans(batch: int, chunks: int, frames_per_video: int = 0) -> list[slice]:
    """The frame ranges of the videos in a batch of ``batch`` frames made of ``chunks`` equal latent batches."""
    if chunks < 1 or batch % chunks:
        raise ValueError(f"a batch of {batch} frames is not {chunks} equal conditioning chunks")
    per_chunk = batch // chunks
    f = frames_per_video or per_chunk
    if per_chunk % f:
        raise ValueError(f"frames_per_video={frames_per_video} does not divide the latent batch of {per_chunk} "
                         f"frames; set it to the frame count of one video (0: the whole latent is one video)")
    return [slice(s, s + f) for s in range(0, batch, f)]


def _same_rows(x: torch.Tensor) -> bool:
    return bool((x == x[:1]).all())


def run_frame_batch(clip: ClipFn, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    spans: list[slice], residuals: ControlResiduals | None = None) -> torch.Tensor:
    """``x [B, c, h, w]`` (frames of all videos), ``timestep [B]``, ``context [B, n, d]``, ``residuals`` per frame
    -> the network's output ``[B, c, h, w]``, each span of :func:`video_spans` one clip of a single batched call
    ``clip(x [V, c, f, h, w], t [V], context [V, n, d], residuals)`` (as SampleVideo batches cond and uncond).

    Within a video every frame must share one timestep and one conditioning (ComfyUI's samplers give them that);
    per-frame prompts (prompt schedules) are refused rather than reduced to the first frame's.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a frame batch [B, c, h, w], got shape {tuple(x.shape)}")
    f = spans[0].stop - spans[0].start
    if any(s.stop - s.start != f for s in spans) or spans[-1].stop != x.shape[0]:
        raise ValueError("videos in one frame batch must have equal frame counts and cover the batch")
    for span in spans:
        t, ctx = timestep[span], context[span]
        if not _same_rows(t):
            raise ValueError(f"frames {span.start}..{span.stop - 1} of one video are at different noise levels "
                             f"{t.unique().tolist()}; a video must be denoised as one clip")
        if not _same_rows(ctx):
            raise ValueError(f"frames {span.start}..{span.stop - 1} of one video carry different conditioning "
                             f"(a per-frame prompt schedule?); the video UNet takes one prompt per clip")
    videos = rearrange(x, "(v f) c h w -> v c f h w", f=f)
    out = clip(videos, timestep[::f], context[::f], residuals)  # residuals are frame-major (v f) already
    return rearrange(out, "v c f h w -> (v f) c h w")
