"""Context windows: denoising a clip longer than one window as overlapping windows of frames.

Long-clip sampling as AnimateDiff-Evolved's context options do it (names kept: ``context_length``,
``context_overlap``, ``fuse_method``, closed loop): at each denoising step the clip's frames are split into windows of
``length`` frames, neighbours sharing ``overlap`` frames; each window runs through the model as a clip of its own, and
every frame's prediction is the weighted average of the predictions of the windows that hold it
(:meth:`ContextWindows.weights`). Every frame is in at least one window; a clip no longer than a window is one window,
the whole clip, so that path equals the windowless one bit for bit.

Shapes: a window is a list of frame indices into the clip's ``f`` frames; weights are ``[size]`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FUSE_METHODS = ("pyramid", "flat")


@dataclass(frozen=True)
class ContextWindows:
    """How a long clip is cut into windows (AnimateDiff-Evolved's context-option names in brackets).

    Attributes:
        length: frames per window (``context_length``).
        overlap: frames shared by neighbouring windows (``context_overlap``); ``0 <= overlap < length``.
        fuse: how overlapping predictions are weighted (``fuse_method``): ``"flat"`` (equal weights) or
            ``"pyramid"`` (weights rising towards a window's middle, so a frame leans on the window that sees most
            of its neighbours).
        closed_loop: the clip is a loop: the last window wraps around to the first frames, so the end joins the
            start.
    """

    length: int = 16
    overlap: int = 4
    fuse: str = "pyramid"
    closed_loop: bool = False

    def __post_init__(self):
        self.check()

    def check(self, frames: int | None = None, max_frames: int | None = None, name: str = "context") -> None:
        """Raise ValueError naming ``name`` and the offending input when these windows cannot run.

        ``frames``: the clip's frame count (a window longer than the clip is clamped to it, which is allowed);
        ``max_frames``: the longest clip the network takes (an AnimateDiff motion module's positional table).
        """
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"{name}: context_length={self.length!r} must be an integer >= 1")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"{name}: context_overlap={self.overlap!r} must be an integer >= 0")
        if self.overlap >= self.length:
            raise ValueError(f"{name}: context_overlap={self.overlap} must be smaller than context_length="
                             f"{self.length} (neighbouring windows would not advance)")
        if self.fuse not in FUSE_METHODS:
            raise ValueError(f"{name}: fuse_method={self.fuse!r}; expected one of {list(FUSE_METHODS)}")
        if frames is not None and (not isinstance(frames, int) or frames < 1):
            raise ValueError(f"{name}: the clip has {frames!r} frames; it needs at least 1")
        size = self.length if frames is None else min(self.length, frames)
        if max_frames is not None and size > max_frames:
            raise ValueError(f"{name}: context_length={self.length} is longer than the motion module's table of "
                             f"{max_frames} frames; use context_length <= {max_frames}")

    def spans(self, frames: int) -> list[list[int]]:
        """The frame indices of each window of a ``frames``-frame clip, in order; together they cover every frame.

        Windows start every ``length - overlap`` frames. Open clips: the last window is moved back to end on the
        clip's last frame (so every window has ``length`` frames). ``closed_loop``: windows keep their stride and
        the last ones wrap around to the clip's first frames. A clip of at most ``length`` frames is one window.
        """
        self.check(frames)
        if frames <= self.length:
            return [list(range(frames))]
        stride = self.length - self.overlap
        if self.closed_loop:
            return [[(s + j) % frames for j in range(self.length)] for s in range(0, frames, stride)]
        starts = list(range(0, frames - self.length, stride)) + [frames - self.length]
        return [list(range(s, s + self.length)) for s in starts]

    def weights(self, size: int) -> torch.Tensor:
        """Fusion weights ``[size]`` (float32) of the frames of one window of ``size`` frames.

        ``flat``: all ones. ``pyramid``: ``min(j + 1, size - j)`` for frame ``j`` (1, 2, ..., 2, 1), never zero, so
        a frame held by one window only keeps that window's prediction exactly."""
        if size < 1:
            raise ValueError(f"window size {size} must be >= 1")
        if self.fuse == "flat":
            return torch.ones(size)
        j = torch.arange(size)
        return torch.minimum(j + 1, size - j).float()
