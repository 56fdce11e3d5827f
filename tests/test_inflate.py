"""Tune-A-Video inflation: equalities with the 2D model and with naive re-computations of the reference maths."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from einops import rearrange
from tunevideo.modules.networks.attention import (
    FirstFrameAttnProcessor,
    SparseCausalAttnProcessor,
    TemporalAttnProcessor,
)
from tunevideo.modules.networks.inflate import VideoTransformerBlock, inflate_unet
from tunevideo.modules.networks.norms import FrameGroupNorm, FrameScope


def _inputs(b=2, f=3, seed=0, ctx_dim=CTX_DIM):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, 16, 16, generator=g), torch.tensor([10, 700][:b]),
            torch.randn(b, 7, ctx_dim, generator=g))


def test_one_frame_equals_2d_unet(tiny_unet2d):
    video = inflate_unet(tiny_unet2d)
    x, t, c = _inputs(f=1)
    with torch.no_grad():
        a = video(x, t, c)[:, :, 0]
        b = tiny_unet2d(x[:, :, 0], t, c).sample
    assert (a - b).abs().max().item() <= 1e-4


def test_untuned_multi_frame_without_temporal_mixing_of_static_video(tiny_unet2d):
    # A clip of identical frames: sparse-causal attention sees duplicates of the same keys, temporal attention is
    # zero-initialised and cross-frame GroupNorm sees identical statistics, so every frame equals the 2D output.
    video = inflate_unet(tiny_unet2d)
    x, t, c = _inputs(f=1)
    clip = x.expand(-1, -1, 5, -1, -1).contiguous()
    with torch.no_grad():
        out = video(clip, t, c)
        ref = tiny_unet2d(x[:, :, 0], t, c).sample
    assert (out - ref[:, :, None]).abs().max().item() <= 1e-4


def test_inflation_leaves_2d_model_bit_identical_and_shares_weights(tiny_unet2d):
    before = {k: v.clone() for k, v in tiny_unet2d.state_dict().items()}
    procs = {k: type(p) for k, p in tiny_unet2d.attn_processors.items()}
    flags = {k: p.requires_grad for k, p in tiny_unet2d.named_parameters()}
    video = inflate_unet(tiny_unet2d)
    x, t, c = _inputs()
    with torch.no_grad():
        video(x, t, c)
    after = tiny_unet2d.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: type(p) for k, p in tiny_unet2d.attn_processors.items()} == procs
    assert {k: p.requires_grad for k, p in tiny_unet2d.named_parameters()} == flags
    vp = dict(video.named_parameters())
    assert all(vp[k] is p for k, p in tiny_unet2d.named_parameters())  # shared, not copied
    assert type(tiny_unet2d.down_blocks[0].resnets[0].norm1) is torch.nn.GroupNorm


def test_state_dict_is_2d_keys_plus_temporal(tiny_unet2d):
    video = inflate_unet(tiny_unet2d)
    keys2d, keys = set(tiny_unet2d.state_dict()), set(video.state_dict())
    added = keys - keys2d
    assert keys2d <= keys
    assert added == set(video.temporal_parameters())
    per_block = {"attn_temp.to_q.weight", "attn_temp.to_k.weight", "attn_temp.to_v.weight",
                 "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias", "norm_temp.weight", "norm_temp.bias"}
    blocks = {k.rsplit(".attn_temp", 1)[0] for k in added if ".attn_temp." in k}
    assert len(blocks) == 16  # 3 levels x (2 down + 3 up) + 1 mid transformer blocks in the tiny config
    assert added == {f"{b}.{leaf}" for b in blocks for leaf in per_block}


def test_frame_group_norm_pools_statistics_over_frames():
    gn = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    fgn = FrameGroupNorm(gn)
    video = torch.randn(2, 8, 3, 5, 5)
    expected = gn(video)  # nn.GroupNorm on the 5D tensor, as the reference ResnetBlock3D does
    with FrameScope(3):
        got = rearrange(fgn(rearrange(video, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert fgn.weight is gn.weight


def _naive_attention(q, k, v, heads, scale):
    q, k, v = (rearrange(z, "n (h d) -> h n d", h=heads) for z in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return rearrange(w @ v, "h n d -> n (h d)")


@pytest.mark.parametrize("processor,key_frames", [
    (SparseCausalAttnProcessor, lambda i: [0, max(i - 1, 0)]),  # Tune-A-Video: first + previous frame
    (FirstFrameAttnProcessor, lambda i: [0]),  # Video-P2P's FrameAttention: first frame only
])
def test_spatial_attention_matches_per_frame_definition(tiny_unet2d, processor, key_frames):
    attn = tiny_unet2d.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    f, n, c = 4, 6, attn.to_q.in_features
    x = torch.randn(2 * f, n, c)
    with torch.no_grad():
        got = processor()(attn, x, num_frames=f)
        frames = rearrange(x, "(b f) n c -> b f n c", f=f)
        for b in range(2):
            for i in range(f):
                kv = torch.cat([frames[b, j] for j in key_frames(i)])
                o = _naive_attention(attn.to_q(frames[b, i]), attn.to_k(kv), attn.to_v(kv), attn.heads, attn.scale)
                assert torch.allclose(got[b * f + i], attn.to_out[0](o), atol=1e-5)


def test_temporal_attention_mixes_frames_at_each_position(tiny_unet2d):
    video = inflate_unet(tiny_unet2d)
    block = video.down_blocks[0].attentions[0].transformer_blocks[0]
    assert isinstance(block, VideoTransformerBlock)
    attn = block.attn_temp
    assert torch.count_nonzero(attn.to_out[0].weight) == 0 and torch.count_nonzero(attn.to_out[0].bias) == 0
    with torch.no_grad():
        attn.to_out[0].weight.normal_()
    f, d, c = 3, 5, attn.to_q.in_features
    x = torch.randn(f, d, c)
    with torch.no_grad():
        got = TemporalAttnProcessor()(attn, x, num_frames=f)
        for pos in range(d):
            seq = x[:, pos]
            o = _naive_attention(attn.to_q(seq), attn.to_k(seq), attn.to_v(seq), attn.heads, attn.scale)
            assert torch.allclose(got[:, pos], attn.to_out[0](o), atol=1e-5)


def test_clone_is_independent_but_shares_storage(tiny_unet2d):
    video = inflate_unet(tiny_unet2d)
    twin = video.clone()
    for (k, a), (_, b) in zip(video.named_parameters(), twin.named_parameters(), strict=True):
        assert a is not b and a.data_ptr() == b.data_ptr(), k
    w = video.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    flag = w.requires_grad
    twin.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.requires_grad_(not flag)
    assert w.requires_grad == flag
    x, t, c = _inputs()
    with torch.no_grad():
        assert torch.equal(video(x, t, c), twin(x, t, c))


def test_gradient_checkpointing_gives_same_gradients(tiny_unet2d):
    video = inflate_unet(tiny_unet2d)
    x, t, c = _inputs(b=1, f=3)
    grads = []
    for ckpt in (False, True):
        v = video.clone()
        w = v.mid_block.attentions[0].transformer_blocks[0].attn_temp.to_q.weight
        w.requires_grad_(True)
        if ckpt:
            v.enable_gradient_checkpointing()
        v.train()
        v(x, t[:1], c[:1]).square().mean().backward()
        grads.append(w.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_temporal_init_comes_from_a_fixed_generator_not_the_global_rng(tiny_unet2d):
    torch.manual_seed(1)
    a = inflate_unet(tiny_unet2d).temporal_parameters()
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    b = inflate_unet(tiny_unet2d).temporal_parameters()
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG stream is left alone
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = inflate_unet(tiny_unet2d, init_seed=5).temporal_parameters()
    q = next(k for k in a if k.endswith("attn_temp.to_q.weight"))
    assert not torch.equal(a[q], other[q])


def test_attention_variants_share_weights_and_differ_only_in_attn1(tiny_unet2d):
    tav = inflate_unet(tiny_unet2d)
    p2p = inflate_unet(tiny_unet2d, attention="video-p2p")
    assert (tav.attention, p2p.attention) == ("tune-a-video", "video-p2p")
    a, b = tav.state_dict(), p2p.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same temporal init
    x, t, c = _inputs(b=1, f=3)
    with torch.no_grad():
        for block in tav.modules():  # let temporal attention act
            if isinstance(block, VideoTransformerBlock):
                block.attn_temp.to_out[0].weight.normal_(0, 0.05)
        switched = tav.with_attention("video-p2p")
        p2p.load_state_dict(tav.state_dict())
        torch.testing.assert_close(switched(x, t, c), p2p(x, t, c), rtol=0, atol=1e-5)
        assert not torch.allclose(tav(x, t, c), p2p(x, t, c), atol=1e-4)  # frame 2 sees frame 1 only in TAV
        torch.testing.assert_close(tav(x[:, :, :1], t, c), p2p(x[:, :, :1], t, c), rtol=0, atol=1e-5)  # one frame
    assert tav.attention == "tune-a-video" and switched.clone().attention == "video-p2p"
    with pytest.raises(ValueError, match="attention='nope'"):
        inflate_unet(tiny_unet2d, attention="nope")
