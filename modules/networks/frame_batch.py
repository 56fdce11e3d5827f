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

#: ``clip(x [1,c,f,h,w], t [1], context [1,n,d], residuals | None) -> [1,c,f,h,w]``: one video through the network.
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
    -> the network's output ``[B, c, h, w]``, each span of :func:`video_spans` run as one clip.

    Within a video every frame must share one timestep and one conditioning (ComfyUI's samplers give them that);
    per-frame prompts (prompt schedules) are refused rather than reduced to the first frame's.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a frame batch [B, c, h, w], got shape {tuple(x.shape)}")
    parts = []
    for span in spans:
        t, ctx = timestep[span], context[span]
        if not _same_rows(t):
            raise ValueError(f"frames {span.start}..{span.stop - 1} of one video are at different noise levels "
                             f"{t.unique().tolist()}; a video must be denoised as one clip")
        if not _same_rows(ctx):
            raise ValueError(f"frames {span.start}..{span.stop - 1} of one video carry different conditioning "
                             f"(a per-frame prompt schedule?); the video UNet takes one prompt per clip")
        res = None
        if residuals is not None:
            res = ControlResiduals(tuple(r if r.dim() == 0 else r[span] for r in residuals.down),
                                   residuals.mid if residuals.mid.dim() == 0 else residuals.mid[span])
        video = rearrange(x[span], "f c h w -> 1 c f h w")
        parts.append(rearrange(clip(video, t[:1], ctx[:1], res), "1 c f h w -> f c h w"))
    return torch.cat(parts)
