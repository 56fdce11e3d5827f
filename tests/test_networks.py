"""The VideoNetwork interface: typed base, frame count passed as arguments, SDPA where maps are not edited."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo import tiny
from tunevideo.modules.methods.video_p2p.control import (
    AttentionController,
    ControlledCrossAttnProcessor,
    ControlledTemporalAttnProcessor,
    EditControl,
    controlled_unet,
)
from tunevideo.modules.networks import norms
from tunevideo.modules.networks.animatediff import build_motion_unet
from tunevideo.modules.networks.base import NetworkBase, VideoNetwork
from tunevideo.modules.networks.inflate import VideoTransformerBlock, inflate_unet


def _inputs(b=1, f=3, size=16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 4, f, size, size, generator=g), torch.tensor([500]),
            torch.randn(b, 7, CTX_DIM, generator=g))


def test_both_bases_implement_the_interface_with_a_typed_base(tiny_unet2d):
    inflated = inflate_unet(tiny_unet2d)
    motion = build_motion_unet(tiny_unet2d, tiny.tiny_motion_module("v2", seed=1))
    for net, base in ((inflated, NetworkBase.INFLATED), (motion, NetworkBase.ANIMATEDIFF)):
        assert isinstance(net, VideoNetwork) and net.base is base
        assert net.clone().base is base and net.with_attention(net.attention).base is base
        assert net.with_temporal(net.temporal).base is base
        assert NetworkBase.of_recorded_attention(net.attention) is base  # what deltas record still names the base
    assert (motion.attention, motion.temporal, motion.attention_options) == ("animatediff", "animatediff", {})
    assert inflated.with_attention("video-p2p").base is NetworkBase.INFLATED
    with pytest.raises(ValueError, match="attention='video-p2p'"):
        motion.with_attention("video-p2p")
    with pytest.raises(ValueError, match="temporal='ei2-stam'"):
        motion.with_temporal("ei2-stam")


class _Spy:
    """An attention processor recording the arguments it is called with, delegating to the real one."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1, frame_size=None):
        self.calls.append((num_frames, frame_size, hidden_states.shape[1]))
        return self.inner(attn, hidden_states, encoder_hidden_states, num_frames=num_frames, frame_size=frame_size)


def test_processors_receive_num_frames_as_an_argument(tiny_unet2d):
    assert not hasattr(norms, "FrameContext")  # no per-model frame state for blocks and processors to read
    video = inflate_unet(tiny_unet2d, attention="ei2-ffam", attention_options={"pool_size": 2})
    calls = []
    for block in video.modules():
        if isinstance(block, VideoTransformerBlock):
            assert not hasattr(block, "context") and not hasattr(block.attn1.processor, "context")
            block.attn1.set_processor(_Spy(block.attn1.processor, calls))
    x, t, c = _inputs(f=3, size=16)
    with torch.no_grad():
        video(x, t, c)
    assert calls and all(f == 3 for f, _, _ in calls)
    assert all(grid is not None and grid[0] * grid[1] == n for _, grid, n in calls)  # FFAM's token grid, per level
    with pytest.raises(RuntimeError, match="FrameScope"):  # the ResNet norms only run inside the forward's scope
        video._core(x[:, :, 0], t, c)


def _controlled(tiny_unet2d, step):
    unet = inflate_unet(tiny_unet2d, attention="video-p2p")
    for block in unet.modules():
        if isinstance(block, VideoTransformerBlock):
            block.attn_temp.to_out[0].weight.data.normal_(0, 0.05)
    control = EditControl(word_swap=True, mapper=torch.eye(7), reweight=torch.full((7,), 2.0))
    controller = AttentionController(control, steps=10)
    controller.state.step = step
    return unet, controller


def test_sdpa_path_equals_explicit_probabilities_on_steps_that_edit_nothing(tiny_unet2d):
    unet, controller = _controlled(tiny_unet2d, step=9)  # past cross_until (2) and self_until (5)
    assert not controller.edits_cross(False) and not controller.edits_temporal()
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    f, n, g = 3, 64, torch.Generator().manual_seed(1)
    hidden = torch.randn(4 * f, n, block.attn2.to_q.in_features, generator=g)
    context = torch.randn(4 * f, 7, CTX_DIM, generator=g)
    cross = ControlledCrossAttnProcessor(controller, "down_blocks.0.", blend_layer=False)
    temporal = ControlledTemporalAttnProcessor(controller)
    with torch.no_grad():
        fast_cross = cross(block.attn2, hidden, context, num_frames=f)
        fast_temp = temporal(block.attn_temp, hidden, num_frames=f)
        controller.edits_cross = lambda blend_layer: True  # force the explicit maps (the controller edits nothing)
        controller.edits_temporal = lambda: True
        slow_cross = cross(block.attn2, hidden, context, num_frames=f)
        slow_temp = temporal(block.attn_temp, hidden, num_frames=f)
    torch.testing.assert_close(fast_cross, slow_cross, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_temp, slow_temp, rtol=0, atol=1e-5)
    assert not controller.state.store  # nothing stored outside blend layers


def test_maps_are_built_only_where_the_controller_edits_or_stores(tiny_unet2d):
    unet, controller = _controlled(tiny_unet2d, step=0)
    assert controller.edits_cross(False) and controller.edits_temporal()
    controller.state.step = 3  # after cross_until, before self_until
    assert not controller.edits_cross(False) and controller.edits_cross(True) and controller.edits_temporal()
    model = controlled_unet(unet, controller)
    x, t, c = _inputs(b=4, f=2, size=16)
    with torch.no_grad():
        model(x, t, c)
    assert controller.state.store  # blend layers stored their maps on an SDPA step of the other layers
    motion = build_motion_unet(tiny_unet2d, tiny.tiny_motion_module("v2", seed=1))
    with pytest.raises(ValueError, match="AnimateDiff base"):
        controlled_unet(motion, controller)
