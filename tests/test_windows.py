"""Context windows for long clips (issue 18): the windows cover every frame and their weights never vanish
(modules/sampling/windows.py), bad inputs fail naming the input."""

from __future__ import annotations

import pytest
import torch
from tunevideo.modules.sampling.windows import ContextWindows


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 23, 40, 97])
@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("length,overlap", [(16, 4), (8, 0), (8, 7), (1, 0)])
def test_windows_cover_every_frame_with_the_stated_overlap(frames, closed_loop, length, overlap):
    w = ContextWindows(length, overlap, closed_loop=closed_loop)
    spans = w.spans(frames)
    assert set().union(*map(set, spans)) == set(range(frames))
    size = min(length, frames)
    assert all(len(s) == size and len(set(s)) == size for s in spans)
    if not closed_loop:
        assert all(s == list(range(s[0], s[0] + size)) for s in spans)
        assert spans[0][0] == 0 and spans[-1][-1] == frames - 1
    for a, b in zip(spans, spans[1:], strict=False):
        assert len(set(a) & set(b)) >= overlap  # neighbours share at least the overlap


def test_window_longer_than_the_clip_is_the_clip():
    assert ContextWindows(16, 4).spans(10) == [list(range(10))]
    assert ContextWindows(16, 4, closed_loop=True).spans(16) == [list(range(16))]


def test_strides_and_closed_loop_wrap():
    assert ContextWindows(8, 2).spans(20) == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    assert ContextWindows(8, 2).spans(18)[-1] == list(range(10, 18))  # last window moved back to the end
    loop = ContextWindows(8, 2, closed_loop=True).spans(18)
    assert loop == [[(s + j) % 18 for j in range(8)] for s in (0, 6, 12)]


def test_weights():
    assert torch.equal(ContextWindows(fuse="flat").weights(5), torch.ones(5))
    assert ContextWindows(fuse="pyramid").weights(5).tolist() == [1, 2, 3, 2, 1]
    assert ContextWindows(fuse="pyramid").weights(4).tolist() == [1, 2, 2, 1]
    assert ContextWindows(fuse="pyramid").weights(1).tolist() == [1]
    assert ContextWindows().weights(16).dtype == torch.float32


@pytest.mark.parametrize("kwargs,needle", [
    (dict(length=8, overlap=8), "context_overlap=8"),
    (dict(length=8, overlap=9), "context_overlap=9"),
    (dict(length=0), "context_length=0"),
    (dict(overlap=-1), "context_overlap=-1"),
    (dict(fuse="gauss"), "fuse_method='gauss'"),
])
def test_bad_options_fail_naming_the_input(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        ContextWindows(**kwargs)


def test_window_longer_than_a_motion_table_fails_naming_the_input():
    w = ContextWindows(32, 4)
    with pytest.raises(ValueError, match=r"context: context_length=32 .* table of 24 frames"):
        w.check(frames=100, max_frames=24)
    w.check(frames=20, max_frames=24)  # clamped to the clip: fits the table
    with pytest.raises(ValueError, match="my_input"):
        w.check(max_frames=16, name="my_input")
