"""EI² (STAM + FFAM): per-definition equalities, one-frame equalities, delta round trips, covariate-shift measure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CTX_DIM
from einops import rearrange
from tunevideo.modules.deltas import load_delta, read_delta, save_delta
from tunevideo.modules.methods.ei2 import covariate_shift
from tunevideo.modules.networks.attention import (
    FineCoarseAttnProcessor,
    PlainAttnProcessor,
    StamTemporalAttnProcessor,
    TemporalAttnProcessor,
    check_pool_size,
)
from tunevideo.modules.networks.inflate import VideoTransformerBlock, inflate_unet
from tunevideo.modules.networks.norms import InstanceCentering
from tunevideo.modules.training.tune import TuneConfig, tune

FFAM = {"attention": "ei2-ffam", "attention_options": {"pool_size": 2}}


def _inputs(b=1, f=3, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, size, size, generator=g), torch.tensor([10, 700][:b]),
            torch.randn(b, 7, CTX_DIM, generator=g))


def _naive(q, k, v, heads, scale):
    q, k, v = (rearrange(z, "n (h d) -> h n d", h=heads) for z in (q, k, v))
    return rearrange(torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v, "h n d -> n (h d)")


def _attn1(unet2d):
    return unet2d.down_blocks[0].attentions[0].transformer_blocks[0].attn1


def test_ffam_matches_fine_own_frame_plus_pooled_other_frames(tiny_unet2d):
    attn = _attn1(tiny_unet2d)
    f, (h, w), p, c = 3, (4, 6), 2, attn.to_q.in_features
    x = torch.randn(2 * f, h * w, c)
    with torch.no_grad():
        got = FineCoarseAttnProcessor(p)(attn, x, num_frames=f, frame_size=(h, w))
        frames = rearrange(x, "(b f) n c -> b f n c", f=f)
        for b in range(2):
            for i in range(f):
                pooled = [rearrange(F.avg_pool2d(rearrange(frames[b, j], "(h w) c -> c h w", h=h), p),
                                    "c h w -> (h w) c") for j in range(f) if j != i]
                kv = torch.cat([frames[b, i], *pooled])  # pooling patches == pooling their projections
                o = _naive(attn.to_q(frames[b, i]), attn.to_k(kv), attn.to_v(kv), attn.heads, attn.scale)
                torch.testing.assert_close(got[b * f + i], attn.to_out[0](o), rtol=0, atol=1e-5)


def test_ffam_on_one_frame_is_plain_self_attention(tiny_unet2d):
    attn = _attn1(tiny_unet2d)
    x = torch.randn(2, 16, attn.to_q.in_features)
    with torch.no_grad():
        torch.testing.assert_close(FineCoarseAttnProcessor(2)(attn, x, num_frames=1, frame_size=(4, 4)),
                                   PlainAttnProcessor()(attn, x), rtol=0, atol=1e-6)
        video = inflate_unet(tiny_unet2d, **FFAM, temporal="ei2-stam")
        x, t, c = _inputs(b=2, f=1)
        torch.testing.assert_close(video(x, t, c)[:, :, 0], tiny_unet2d(x[:, :, 0], t, c).sample, rtol=0, atol=1e-4)


def test_instance_centering_and_stam_normalised_mapping(tiny_unet2d):
    x = torch.randn(2 * 4, 5, 8) + 3.0
    centred = InstanceCentering()(x, num_frames=4)
    assert rearrange(centred, "(b f) d c -> b f d c", f=4).mean(1).abs().max() < 1e-5
    offset = rearrange(centred - x, "(b f) d c -> b f d c", f=4)
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=0, atol=1e-5)  # one shift per clip
    assert not list(InstanceCentering().parameters())
    # Per-definition check of the STAM attention at each spatial position.
    attn = inflate_unet(tiny_unet2d).down_blocks[0].attentions[0].transformer_blocks[0].attn_temp
    with torch.no_grad():
        attn.to_out[0].weight.normal_()
        f, d, c = 5, 3, attn.to_q.in_features
        x = torch.randn(f, d, c)
        got = StamTemporalAttnProcessor()(attn, x, num_frames=f)
        for pos in range(d):
            q, k, v = (rearrange(p(x[:, pos]), "n (h e) -> h n e", h=attn.heads)
                       for p in (attn.to_q, attn.to_k, attn.to_v))
            a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)
            o = rearrange((a / a.norm(dim=-1, keepdim=True)) @ v, "h n e -> n (h e)")
            torch.testing.assert_close(got[:, pos], attn.to_out[0](o), rtol=0, atol=1e-5)


def test_normalised_mapping_keeps_the_variance_softmax_shrinks(tiny_unet2d):
    # Zero query/key projections give uniform attention, independent of the values; identity value/output
    # projections make the mixed values the raw input (uncorrelated across frames, variance 1).
    attn = inflate_unet(tiny_unet2d).down_blocks[0].attentions[0].transformer_blocks[0].attn_temp
    c, f = attn.to_q.in_features, 8
    with torch.no_grad():
        for lin, w in ((attn.to_q, 0), (attn.to_k, 0), (attn.to_v, torch.eye(c)), (attn.to_out[0], torch.eye(c))):
            lin.weight.copy_(w * torch.ones_like(lin.weight) if not torch.is_tensor(w) else w)
            if lin.bias is not None:
                lin.bias.zero_()
        x = torch.randn(f, 4096, c, generator=torch.Generator().manual_seed(0))
        stam = StamTemporalAttnProcessor()(attn, x, num_frames=f)
        tav = TemporalAttnProcessor()(attn, x, num_frames=f)
    assert abs(stam.var().item() - 1) < 0.03  # sum_j v_j / sqrt(f): variance kept
    assert abs(tav.var().item() - 1 / f) < 0.01  # sum_j v_j / f: softmax averaging shrinks it f-fold


def test_stam_model_has_no_norm_temp_and_starts_as_the_image_model(tiny_unet2d):
    tav, stam = inflate_unet(tiny_unet2d), inflate_unet(tiny_unet2d, temporal="ei2-stam")
    assert stam.temporal == "ei2-stam" and not any("norm_temp" in k for k in stam.state_dict())
    assert set(stam.state_dict()) == {k for k in tav.state_dict() if "norm_temp" not in k}
    x, t, c = _inputs(f=3)
    with torch.no_grad():
        torch.testing.assert_close(stam(x, t, c), tav(x, t, c), rtol=0, atol=1e-5)  # zero-initialised to_out
        back = stam.with_temporal("tune-a-video")
        assert back.temporal == "tune-a-video" and set(back.state_dict()) == set(tav.state_dict())
        torch.testing.assert_close(back(x, t, c), tav(x, t, c), rtol=0, atol=1e-5)
    assert stam.clone().temporal == "ei2-stam" and tav.temporal == "tune-a-video"  # source untouched
    with pytest.raises(ValueError, match="temporal='nope'"):
        inflate_unet(tiny_unet2d, temporal="nope")


def test_ei2_delta_records_both_options_and_reloads_them(tiny_unet2d, tiny_video_model, tmp_path):
    base = tiny_video_model
    ei2 = base.replace(network=base.network.with_attention("ei2-ffam", {"pool_size": 2}).with_temporal("ei2-stam"))
    x, t, c = _inputs(f=2)
    tuned, _ = tune(ei2, x, c, TuneConfig(steps=1, learning_rate=1e-3, seed=0, gradient_checkpointing=False))
    path = tmp_path / "ei2.safetensors"
    save_delta(tuned, path)
    tensors, meta = read_delta(path)
    assert meta["temporal"] == "ei2-stam" and meta["attention"] == "ei2-ffam"
    assert meta["attention_options"] == '{"pool_size": 2}'
    assert not any("norm_temp" in k for k in tensors)
    loaded = load_delta(base, path)  # a plain Tune-A-Video inflation switches to what the file records
    assert (loaded.network.temporal, loaded.network.attention, loaded.network.attention_options) == (
        "ei2-stam", "ei2-ffam", {"pool_size": 2})
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x, t, c), tuned.network(x, t, c), rtol=0, atol=0)
    # And a Tune-A-Video delta loaded onto an EI² model switches back.
    tav, _ = tune(base, x, c, TuneConfig(steps=1, seed=0, gradient_checkpointing=False))
    save_delta(tav, tmp_path / "tav.safetensors")
    back = load_delta(ei2, tmp_path / "tav.safetensors")
    assert (back.network.temporal, back.network.attention) == ("tune-a-video", "tune-a-video")


def test_pool_size_that_does_not_divide_the_latent_is_named(tiny_unet2d):
    video = inflate_unet(tiny_unet2d, attention="ei2-ffam", attention_options={"pool_size": 3})
    x, t, c = _inputs(f=2)
    with pytest.raises(ValueError, match="fine_coarse_pool=3"):
        video(x, t, c)
    with pytest.raises(ValueError, match="fine_coarse_pool=4 does not divide the 2x2"):
        check_pool_size(4, (16, 16), levels=4)
    check_pool_size(2, (16, 16), levels=4)
    check_pool_size(4, (64, 64), levels=4)
    with pytest.raises(ValueError, match="fine_coarse_pool=0"):
        inflate_unet(tiny_unet2d, attention="ei2-ffam", attention_options={"pool_size": 0})
    with pytest.raises(ValueError, match="does not take options"):
        inflate_unet(tiny_unet2d, attention="tune-a-video", attention_options={"pool_size": 2})


def test_covariate_shift_measure_is_zero_untuned_and_sees_tuning(tiny_video_model):
    x, t, c = _inputs(f=2, size=8)
    base = tiny_video_model.network
    zero = covariate_shift(base, base.clone(), x, t, c)
    assert zero["mean_shift"] == 0 and zero["var_shift"] == 0 and zero["blocks"] == 16
    config = TuneConfig(steps=1, learning_rate=1e-3, seed=0, trainable=("attn_temp",), gradient_checkpointing=False)
    tuned, _ = tune(tiny_video_model, x, c, config)
    moved = covariate_shift(base, tuned.network, x, t, c)
    assert moved["mean_shift"] > 0 and moved["var_shift"] > 0


def test_inflate_node_offers_ei2_layers(tiny_unet2d, tiny_unet_config):
    from test_nodes import N, fake_model

    spec = N["InflateUNetTemporal"].INPUT_TYPES()["optional"]
    assert "ei2-ffam" in spec["attention"][0] and spec["temporal_layer"][0] == ["tune-a-video", "ei2-stam"]
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config),
                                                      attention="ei2-ffam", temporal_layer="ei2-stam",
                                                      fine_coarse_pool=2)
        (plain,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config))
    assert (video.network.attention, video.network.attention_options, video.network.temporal) == (
        "ei2-ffam", {"pool_size": 2}, "ei2-stam")
    assert (plain.network.attention_options, plain.network.temporal) == ({}, "tune-a-video")
    blocks = [m for m in video.network.modules() if isinstance(m, VideoTransformerBlock)]
    assert all(isinstance(b.attn1.processor, FineCoarseAttnProcessor) and b.attn1.processor.pool_size == 2
               for b in blocks)
