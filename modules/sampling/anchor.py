"""The global anchor of windowed denoising: every window attends to frame 0 of the *whole* clip.

Tune-A-Video's sparse-causal attention (Wu et al., ICCV 2023, Sec. 4.1) and Video-P2P's first-frame attention
(Liu et al., 2023, Sec. 3.2) read the keys and values of a clip's first frame in every frame: that frame anchors the
appearance. Cut into context windows (:mod:`.windows`), each window would anchor on its *own* first frame and the
appearance would drift from window to window. So one model call over windows shares one :class:`FrameAnchor`: while
the window holding frame 0 runs (always the first, with frame 0 first), each spatial self-attention layer records the
keys and values of frame 0; the later windows' layers read them instead of their own first frame's.

How the anchor reaches the layers: :func:`~.windows.windowed` opens :func:`anchor_scope` around each window's model
call; the network's ``forward`` (:class:`~..networks.inflate.InflatedUNet`) takes :func:`current_anchor` into the frame
keyword arguments that it already passes to every transformer block, and the blocks hand it to ``attn1``'s processor
(``anchor=``). Networks without frame-0 attention (AnimateDiff's per-frame spatial attention) ignore it.

Shapes: recorded keys and values are ``[b, n, c]`` (frame 0 of each of the call's ``b`` clips, ``n`` tokens).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch


class FrameAnchor:
    """Frame 0's keys and values per self-attention layer, for one model call over several windows.

    ``recording`` (True while the window holding frame 0 runs): :meth:`exchange` stores what a layer offers and
    returns it unchanged. Afterwards (``recording = False``) it returns what that layer stored.
    """

    def __init__(self):
        self.recording = True
        self._kv: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}

    def exchange(self, layer: Hashable, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame 0's ``(key, value)`` ``[b, n, c]`` for ``layer`` (the attention module): the offered ones while
        recording, else those recorded for ``layer``."""
        if self.recording:
            self._kv[layer] = (key, value)
            return key, value
        if layer not in self._kv:
            raise RuntimeError("a self-attention layer ran in a later window but not in the window holding frame 0; "
                               "the anchor was not recorded (each window must run the same network)")
        k0, v0 = self._kv[layer]
        if k0.shape != key.shape:
            raise RuntimeError(f"frame-0 keys were recorded as {tuple(k0.shape)} but a later window offers "
                               f"{tuple(key.shape)}: every window of one call must run the same batch and size")
        return k0, v0


_ANCHOR: ContextVar[FrameAnchor | None] = ContextVar("tunevideo_frame_anchor", default=None)


@contextmanager
def anchor_scope(anchor: FrameAnchor | None) -> Iterator[FrameAnchor | None]:
    """``with anchor_scope(a):`` network calls inside read :func:`current_anchor` ``== a`` (None: no anchor)."""
    token = _ANCHOR.set(anchor)
    try:
        yield anchor
    finally:
        _ANCHOR.reset(token)


def current_anchor() -> FrameAnchor | None:
    """The anchor of the innermost :func:`anchor_scope`, or None outside any (windowless calls)."""
    return _ANCHOR.get()
