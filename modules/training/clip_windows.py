"""Tuning on clips longer than one window: each step trains on one window of the clip (issue 18, point 3).

The sampling side cuts a long clip into overlapping context windows (:class:`~..sampling.windows.ContextWindows`,
AnimateDiff-Evolved's context options) and fuses their predictions. Tuning needs no fusion: every step of the
denoising loss is an independent sample, so a step trains on *one* window, and the steps visit the windows in a
seeded shuffled cycle (:func:`window_schedule`): every window, hence every frame, is seen once in each
``len(spans)`` steps, in an order that differs between cycles. Peak memory is that of a clip of the window's length,
whatever the clip's; what the temporal layers learn is motion within a window, which is also all they see when
sampling with the same windows.

A window that does not hold frame 0 trains with the clip's frame 0 as its anchor, as windowed sampling runs it
(:func:`~.tune.record_anchor`: a no-gradient pass over the first window records frame 0's keys/values, about one
forward more per such step). A clip no longer than the window is one window, the whole clip, passed on as the very
tensor the loop holds, so the run equals the windowless one bit for bit (the schedule draws from its own generator,
never the training noise's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from ..sampling.windows import ContextWindows

#: Mixed into the seed of the window order, so that it is independent of the noise drawn with the same seed.
SCHEDULE_SALT = 0x57A7E


def window_schedule(windows: int, steps: int, seed: int) -> list[int]:
    """Window index per step, ``[steps]``: consecutive cycles through ``range(windows)``, each a permutation drawn
    from a CPU generator seeded with ``seed``. Any ``windows`` consecutive steps from a cycle's start cover them all.
    """
    if windows < 1 or steps < 0:
        raise ValueError(f"need windows >= 1 and steps >= 0, got windows={windows}, steps={steps}")
    gen = torch.Generator().manual_seed(int(seed) ^ SCHEDULE_SALT)
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(windows, generator=gen).tolist()
    return order[:steps]


def take_frames(x: torch.Tensor, span: Sequence[int]) -> torch.Tensor:
    """Frames ``span`` of ``x [b,c,f,h,w]`` -> ``[b,c,len(span),h,w]``: ``x`` itself for the whole clip, a view for
    consecutive frames, a gathered copy for a window that wraps around (closed loop)."""
    f = x.shape[2]
    first = span[0]
    if list(span) == list(range(first, first + len(span))):
        return x if (first, len(span)) == (0, f) else x[:, :, first:first + len(span)]
    return x.index_select(2, torch.as_tensor(list(span), device=x.device))


def step_frames(windows: ContextWindows | None, frames: int) -> int:
    """Frames one tuning step trains on: the window's length, clamped to the clip (the clip without windows)."""
    return frames if windows is None else min(windows.length, frames)


def check_clip_fits(network, windows: ContextWindows | None, frames: int, name: str = "context",
                    clip_name: str = "latent") -> None:
    """Refuse, naming the input, a clip the network cannot take per step: without windows, a clip longer than a
    motion module's positional table (``network.max_frames``); with windows, a window longer than that table or
    windows that cannot run (:meth:`~..sampling.windows.ContextWindows.check`)."""
    table = getattr(network, "max_frames", None)
    if windows is not None:
        windows.check(frames, max_frames=table, name=name)
    elif table is not None and frames > table:
        raise ValueError(f"{clip_name} has {frames} frames, more than the motion module's positional table of "
                         f"{table} frames; connect a VIDEO_CONTEXT to '{name}' (Video Context Windows) with "
                         f"context_length <= {table} to tune on windows of the clip")


BatchPolicy = Callable[[int, torch.Tensor, torch.Tensor], object]


def windowed_batches(windows: ContextWindows, frames: int, steps: int, seed: int, inner: BatchPolicy) -> BatchPolicy:
    """A per-step batch policy (:data:`~.tune.BatchPolicy`) training step ``i`` on the window
    :func:`window_schedule` picks, handed to ``inner`` as if it were the clip (Dreamix's mixed batches then split
    that window into frames). The callback's info gets ``window``: ``(first frame, last frame)`` of the clip."""
    spans = windows.spans(frames)
    order = window_schedule(len(spans), steps, seed)

    def policy(step: int, video: torch.Tensor, context: torch.Tensor):
        span = spans[order[step]]
        batch = inner(step, take_frames(video, span), context)
        anchor = None
        if span[0] != 0 and batch.temporal and batch.latents.shape[2] == len(span):  # a window without frame 0
            anchor = take_frames(video, spans[0]).expand(batch.latents.shape[0], -1, -1, -1, -1)
        return dataclasses.replace(batch, info={**batch.info, "window": (span[0], span[-1])}, anchor_latents=anchor)
    return policy
