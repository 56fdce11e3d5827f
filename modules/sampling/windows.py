"""Context windows: denoising a clip longer than one window as overlapping windows of frames.

Long-clip sampling as AnimateDiff-Evolved's context options do it (names kept: ``context_length``,
``context_overlap``, ``fuse_method``, closed loop): at each denoising step the clip's frames are split into windows of
``length`` frames, neighbours sharing ``overlap`` frames; each window runs through the model as a clip of its own, and
every frame's prediction is the weighted average of the predictions of the windows that hold it
(:meth:`ContextWindows.weights`). Every frame is in at least one window; a clip no longer than a window is one window,
the whole clip, so that path equals the windowless one bit for bit.

Windows wrap the model, not the sampler: :func:`windowed` turns a conditional model ``model(x, t, context)`` into
one that runs window by window and fuses, so DDIM inversion, sampling (Tune-A-Video, Dreamix's corrupted-video start),
null-text inversion and Video-P2P's two-branch edit all get windows from the one DDIM loop (:mod:`.ddim`), and each
window's frames share the clip's frame 0 as their anchor (:mod:`.anchor`).

What a layer sees inside a window (the clip is the window; the rest of the clip is not there):

- Sparse-causal attention (Tune-A-Video): frame ``i`` attends to frame 0 of the *whole clip* (the anchor) and to its
  previous frame. The previous frame of a window's first frame is the frame before the window edge, which this
  window does not hold; that frame uses itself, as frame 0 of a clip does.
- First-frame attention (Video-P2P): every frame attends to frame 0 of the whole clip (the anchor).
- FFAM (EI²): each patch sees its own frame's fine patches and the pooled patches of the other frames of its
  *window* (the anchor is not added; FFAM does not single out frame 0).
- Temporal attention (Tune-A-Video's, EI²'s STAM, AnimateDiff's motion module) and the ResNets' frame-pooled
  GroupNorm statistics are limited to the window's frames; AnimateDiff's positional table must hold a window.

Shapes: a window is a list of frame indices into the clip's ``f`` frames; weights are ``[size]`` float32; the wrapped
model takes and returns ``[b, c, f, h, w]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .anchor import FrameAnchor, anchor_scope
from .conditioning import ModelFn

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


@dataclass(frozen=True)
class Window:
    """The window a wrapped model is about to run (what :func:`windowed` tells its ``on_window`` hook).

    Attributes:
        index, count: this is window ``index`` of ``count`` in this model call.
        frames: its frame indices into the clip, in the order the model sees them.
        share: ``[size]`` float32, this window's share of each of its frames' fused prediction (a frame's shares over
            all windows sum to 1; a frame in one window only has share 1).
        clip_frames: the clip's frame count.
    """

    index: int
    count: int
    frames: tuple[int, ...]
    share: torch.Tensor
    clip_frames: int

    @property
    def whole(self) -> bool:
        """The window is the whole clip, in order (the windowless computation)."""
        return self.count == 1


WindowHook = Callable[[Window], None]


def fusion_shares(windows: ContextWindows, spans: list[list[int]], frames: int) -> list[torch.Tensor]:
    """Each window's share ``w_k(j) / sum_{k' holding j} w_k'(j)`` of its frames' fused predictions, ``[size]``."""
    weights = [windows.weights(len(span)) for span in spans]
    totals = torch.zeros(frames)
    for span, w in zip(spans, weights, strict=True):
        totals[span] += w
    return [w / totals[span] for span, w in zip(spans, weights, strict=True)]


def windowed(model: ModelFn, windows: ContextWindows | None, max_frames: int | None = None,
             on_window: WindowHook | None = None, name: str = "context") -> ModelFn:
    """``model(x [b,c,f,h,w], t, context) -> [b,c,f,h,w]`` run over the context windows of ``x``'s frames.

    Each window's frames run as a clip of their own (the window holding frame 0 first, recording the anchor:
    :class:`~.anchor.FrameAnchor`); frame ``j``'s output is ``sum_k share_k(j) out_k(j)`` over the windows ``k``
    holding it (:func:`fusion_shares`). A clip that fits one window is passed to ``model`` as it is, so the result
    equals the unwrapped model's bit for bit. ``windows=None``: ``model`` itself.

    ``max_frames``: the longest clip the network takes (AnimateDiff's table), checked against the windows on every
    call (ValueError naming ``name``). ``on_window(window)`` runs before each window (progress, interrupts,
    attention controllers that keep per-frame state). Differentiable (null-text inversion optimises through it).
    """
    if windows is None:
        return model

    def run(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        windows.check(frames, max_frames, name)
        spans = windows.spans(frames)
        shares = fusion_shares(windows, spans, frames)
        if len(spans) == 1:
            if on_window is not None:
                on_window(Window(0, 1, tuple(spans[0]), shares[0], frames))
            return model(x, t, context)
        anchor, out = FrameAnchor(), None
        for k, (span, share) in enumerate(zip(spans, shares, strict=True)):
            if on_window is not None:
                on_window(Window(k, len(spans), tuple(span), share, frames))
            idx = torch.tensor(span, device=x.device)
            anchor.recording = k == 0  # spans[0] starts at frame 0
            with anchor_scope(anchor):
                part = model(x.index_select(2, idx), t, context)
            if out is None:
                out = part.new_zeros(*part.shape[:2], frames, *part.shape[3:])
            out = out.index_add(2, idx.to(part.device), part * share.to(part).view(1, 1, -1, 1, 1))
        return out

    return run
