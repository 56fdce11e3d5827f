"""VideoContextWindows: context windows for clips longer than one window (issue 18), and what the denoising nodes
share to take them: the optional ``context`` input, its check, and progress with an interrupt check per window."""

from __future__ import annotations

from ..modules.sampling.windows import FUSE_METHODS, ContextWindows, Window
from . import host

VIDEO_CONTEXT = "VIDEO_CONTEXT"
DEFAULT = ContextWindows()


def context_input() -> tuple:
    """The optional ``context`` input of every denoising node (absent: the whole clip at once, as before)."""
    return (VIDEO_CONTEXT, {"tooltip": "Optional context windows (Video Context Windows) for clips longer than one "
                                       "window: each step runs window by window and fuses the overlaps. Absent: the "
                                       "whole clip at once."})


def training_context_input() -> tuple:
    """The training nodes' optional ``context`` input: each step trains on one window of the clip."""
    return (VIDEO_CONTEXT, {"tooltip": "Optional context windows (Video Context Windows): each training step trains "
                                       "on one window of the clip, windows visited in a seeded shuffled cycle that "
                                       "covers every frame; memory is that of one window. Not connected: every step "
                                       "trains on the whole clip."})


def check_context(context, video_unet, frames: int, name: str = "context") -> ContextWindows | None:
    """``context`` (None or a VIDEO_CONTEXT) checked against a ``frames``-frame clip and the network's longest clip
    (AnimateDiff's positional table); ValueError naming ``name``."""
    if context is None:
        return None
    if not isinstance(context, ContextWindows):
        raise ValueError(f"{name} must come from Video Context Windows (a VIDEO_CONTEXT), got "
                         f"{type(context).__name__}")
    context.check(frames, video_unet.network.max_frames, name)
    return context


class WindowProgress:
    """Progress over steps x windows, callable as the engine's per-step ``callback(step, total, info)``;
    :meth:`window` is the windows' ``on_window`` hook: it moves the bar and honours an interrupt between windows."""

    def __init__(self, steps: int, windows: int, label: str):
        self.windows, self.step, self.total, self.shown = windows, 0, steps, 0
        self.bar = host.Progress(steps * windows, label)

    def __call__(self, step: int, total: int, info: dict | None = None) -> None:
        self.step, self.total = step, total
        self.shown = step * self.windows
        self.bar(self.shown, total * self.windows, info)

    def window(self, window: Window) -> None:
        # Guidance may call the model more than once per step; the bar never runs backwards.
        self.shown = max(self.shown, self.step * self.windows + window.index)
        self.bar(self.shown, self.total * self.windows)


def denoising_progress(steps: int, label: str, context: ContextWindows | None, frames: int):
    """``(callback, on_window)``: without windows the per-step progress bar of before and no hook; with windows a
    :class:`WindowProgress`."""
    if context is None:
        return host.Progress(steps, label), None
    progress = WindowProgress(steps, len(context.spans(frames)), label)
    return progress, progress.window


class VideoContextWindows:
    """Context windows for long clips: one options node feeding every denoising node's ``context`` input."""

    CATEGORY = "TuneVideo/sampling"
    FUNCTION = "run"
    RETURN_TYPES = (VIDEO_CONTEXT,)
    RETURN_NAMES = ("context",)
    OUTPUT_TOOLTIPS = ("Context windows for DDIM Invert Video, Sample Video, Null-Text Invert Video, Video-P2P Edit "
                       "and Dreamix Corrupted Sample (their optional 'context' input).",)
    DESCRIPTION = ("Denoise clips longer than one window (AnimateDiff-Evolved's context options): each step runs "
                   "overlapping windows of frames and fuses their predictions; every window attends to frame 0 of "
                   "the whole clip, so the appearance does not drift. A window longer than the clip is the clip.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "context_length": ("INT", {"default": DEFAULT.length, "min": 1, "max": 4096,
                                       "tooltip": "Frames per window. AnimateDiff bases: at most the motion "
                                                  "module's table (16 to 32). The model's activation memory "
                                                  "follows this, not the clip length."}),
            "context_overlap": ("INT", {"default": DEFAULT.overlap, "min": 0, "max": 4095,
                                        "tooltip": "Frames shared by neighbouring windows; smaller than "
                                                   "context_length. More overlap: smoother joins, more compute."}),
            "fuse_method": (list(FUSE_METHODS), {"default": DEFAULT.fuse,
                                                 "tooltip": "How overlapping predictions are weighted: pyramid "
                                                            "(more weight towards a window's middle) or flat "
                                                            "(equal)."}),
            "closed_loop": ("BOOLEAN", {"default": DEFAULT.closed_loop,
                                        "tooltip": "The clip loops: the last window wraps around to the first "
                                                   "frames, so the end joins the start."}),
        }}

    def run(self, context_length, context_overlap, fuse_method, closed_loop):
        return (ContextWindows(int(context_length), int(context_overlap), fuse_method, bool(closed_loop)),)
