"""A VIDEO_UNET in ComfyUI's own sampling (nodes/core_model.py, modules/sampling/sigmas.py,
modules/networks/frame_batch.py), without a host: the sigma-space maths equals the pack's DDIM, the frame-batch
call keeps videos apart, ControlNet residuals land where diffusers adds them, and what cannot be honoured is refused.
The same properties through a real ComfyUI's samplers and ControlNet: tests/test_comfyui_host.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CTX_DIM, make_unet2d
from tunevideo.modules.networks.frame_batch import video_frames
from tunevideo.modules.networks.inflate import inflate_unet
from tunevideo.modules.sampling.ddim import ddim_invert, sample
from tunevideo.modules.sampling.schedule import NoiseSchedule
from tunevideo.modules.sampling.sigmas import from_sigma_space, sampler_sigmas, sigma_at, to_sigma_space
from tunevideo.nodes.boundary import INVERTED_KEY
from tunevideo.nodes.core_model import (
    InvertedNoiseSigmas,
    VideoDiffusionModel,
    control_residuals,
    down_residual_count,
)

G = torch.Generator().manual_seed(0)


def _rand(*shape):
    return torch.randn(*shape, generator=G)


def _perturb_temporal(network, seed=1):
    """Give the temporal layers non-zero output projections (fresh inflation zeroes them), so frames interact."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture()
def network(tiny_unet_config):
    net = inflate_unet(make_unet2d(tiny_unet_config))
    _perturb_temporal(net)
    return net.eval()


def _timestep_of(sigma, log_sigmas):
    """ComfyUI's ModelSamplingDiscrete.timestep: the index of the nearest log-sigma."""
    return (math.log(sigma) - log_sigmas).abs().argmin().float() if sigma > 0 else torch.tensor(0.0)


def test_sampler_sigmas_are_the_ddim_timesteps_in_sigma_space():
    s = NoiseSchedule.scaled_linear()
    sig = sampler_sigmas(s, 10)
    ts = s.ddim_timesteps(10).tolist()
    assert sig.shape == (11,)
    want = [math.sqrt((1 - s.alpha(t)) / s.alpha(t)) for t in ts] + [sigma_at(s, -1)]
    assert torch.allclose(sig, torch.tensor(want, dtype=torch.float32))
    assert float(sig[-1]) == pytest.approx(math.sqrt((1 - s.alpha(0)) / s.alpha(0)))  # a_0: sigma_min, not 0
    zero = sampler_sigmas(s, 10, final="zero")
    assert zero[-1] == 0 and torch.equal(zero[:-1], sig[:-1])  # KSampler's ddim_uniform ends at 0
    kar = sampler_sigmas(s, 10, spacing="karras", moves=4)
    assert kar.shape == (5,) and float(kar[0]) == pytest.approx(float(sig[0]))
    assert float(kar[-1]) == pytest.approx(float(sig[-1]), rel=1e-5)
    assert bool((kar[1:] < kar[:-1]).all())
    kz = sampler_sigmas(s, 10, spacing="karras", final="zero", moves=4)
    assert kz.shape == (5,) and kz[-1] == 0 and float(kz[-2]) == pytest.approx(float(sig[-1]), rel=1e-5)
    with pytest.raises(ValueError, match="karras"):
        sampler_sigmas(s, 10, moves=4)
    with pytest.raises(ValueError, match="final"):
        sampler_sigmas(s, 10, final="sigma0")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_euler_in_sigma_space_from_inverted_noise_equals_sample_video(network, prediction):
    """What a core ``ddim``/``euler`` sampler does with InvertedNoiseSigmas' output (k-diffusion Euler on
    ``x_sigma``, the model called on ``x_sigma / sqrt(1 + sigma^2)`` at ComfyUI's timestep of sigma, cfg on the
    denoised) equals the pack's DDIM sampling from the same inverted noise."""
    s = NoiseSchedule.scaled_linear(prediction_type=prediction)
    x0, cond, uncond = _rand(1, 4, 3, 8, 8), _rand(1, 5, CTX_DIM), _rand(1, 5, CTX_DIM)

    def fn(x, t, ctx):
        return network(x, t, ctx)

    steps, cfg = 6, 7.5
    with torch.no_grad():
        x_t = ddim_invert(fn, s, x0, uncond, steps)
        want = sample(fn, s, x_t, cond, uncond, steps, cfg)
        sigmas = sampler_sigmas(s, steps)
        log_sigmas = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().log().float()
        x = to_sigma_space(x_t, float(sigmas[0]))
        for i in range(steps):
            sg = float(sigmas[i])
            a = 1 / (1 + sg * sg)
            t = _timestep_of(sg, log_sigmas)
            xin = x * math.sqrt(a)
            outs = [network(xin, t, c) for c in (cond, uncond)]
            eps = [o if prediction == "epsilon" else math.sqrt(a) * o + math.sqrt(1 - a) * xin for o in outs]
            den = [x - sg * e for e in eps]
            den = den[1] + cfg * (den[0] - den[1])
            x = x + (float(sigmas[i + 1]) - sg) * (x - den) / sg
    got = from_sigma_space(x, float(sigmas[-1]))  # the sampler stops at sigma(a_0): back to the VP latent
    assert (got - want).abs().max() <= 1e-4


def test_frame_batch_keeps_cond_uncond_and_videos_apart(network):
    """Two conditioning chunks of a latent holding two videos of 3 frames: equal to four separate clip calls."""
    shim = VideoDiffusionModel(network.clone(), frames_per_video=3)
    x = _rand(12, 4, 8, 8)
    ctx = torch.cat([_rand(1, 5, CTX_DIM).expand(6, 5, CTX_DIM), _rand(1, 5, CTX_DIM).expand(6, 5, CTX_DIM)])
    t = torch.full((12,), 500.0)
    with torch.no_grad():
        got = shim(x, t, ctx, transformer_options={"cond_or_uncond": [0, 1]})
        for k in range(4):
            clip = x[3 * k:3 * k + 3].permute(1, 0, 2, 3)[None]
            want = network(clip, t[:1], ctx[3 * k:3 * k + 1])[0].permute(1, 0, 2, 3)
            assert (got[3 * k:3 * k + 3] - want).abs().max() <= 1e-5
        whole = shim.__class__(network.clone())(x, t, ctx, transformer_options={"cond_or_uncond": [0, 1]})
    assert not torch.allclose(whole, got, atol=1e-4)  # 6-frame clips differ: the temporal layers do mix frames
    assert video_frames(12, 2) == 6 and video_frames(12, 2, 3) == 3
    with pytest.raises(ValueError, match="frames_per_video=4"):
        video_frames(12, 2, 4)


def test_per_frame_prompts_and_mixed_noise_levels_are_refused(network):
    shim = VideoDiffusionModel(network.clone())
    x, ctx = _rand(2, 4, 8, 8), _rand(2, 5, CTX_DIM)
    with pytest.raises(ValueError, match="different conditioning"):
        shim(x, torch.full((2,), 10.0), ctx)
    with pytest.raises(ValueError, match="different noise levels"):
        shim(x, torch.tensor([10.0, 20.0]), ctx[:1].expand(2, 5, CTX_DIM))


def test_one_frame_of_a_fresh_inflation_equals_the_2d_unet(tiny_unet_config):
    unet2d = make_unet2d(tiny_unet_config)
    shim = VideoDiffusionModel(inflate_unet(make_unet2d(tiny_unet_config)))
    x, ctx, t = _rand(2, 4, 8, 8), _rand(2, 5, CTX_DIM), torch.tensor([321.0, 321.0])
    with torch.no_grad():
        got = shim(x, t, ctx, transformer_options={"cond_or_uncond": [1, 0]})
        want = unet2d(x, t, ctx).sample
    assert (got - want).abs().max() <= 1e-5


def _controlnet_like(count, frames, sizes, mid_channels):
    """Random residuals shaped like an SD ControlNet's: one per skip (channels/size of that skip) + middle."""
    down = [_rand(frames, c, h, w) * 0.5 for c, h, w in sizes]
    return down, _rand(frames, mid_channels, *sizes[-1][1:]) * 0.5


def _skip_shapes(unet2d, x, t, ctx):
    shapes = []
    hooks = [unet2d.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))]
    for block in unet2d.down_blocks:
        for r in block.resnets:
            hooks.append(r.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))))
        for d in block.downsamplers or []:
            hooks.append(d.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))))
    with torch.no_grad():
        unet2d(x, t, ctx)
    for h in hooks:
        h.remove()
    return shapes


def test_controlnet_residuals_are_added_where_diffusers_adds_them(tiny_unet_config, network):
    unet2d = make_unet2d(tiny_unet_config)
    count = down_residual_count(unet2d.config)
    x, t = _rand(3, 4, 8, 8), torch.full((3,), 400.0)
    ctx = _rand(1, 5, CTX_DIM).expand(3, 5, CTX_DIM)
    shapes = _skip_shapes(unet2d, x[:1], t[:1], ctx[:1])
    assert len(shapes) == count
    down, mid = _controlnet_like(count, 3, shapes, unet2d.config.block_out_channels[-1])
    # ComfyUI's layout: control["output"][i] is skip i (popped from the end by the decoder), control["middle"][-1]
    control = {"input": [], "middle": [mid], "output": list(down)}
    # one frame through a fresh inflation == the 2D UNet with diffusers' residual arguments
    shim1 = VideoDiffusionModel(inflate_unet(make_unet2d(tiny_unet_config)))
    with torch.no_grad():
        got = shim1(x[:1], t[:1], ctx[:1], control={k: [r[:1] for r in v] for k, v in control.items()})
        want = unet2d(x[:1], t[:1], ctx[:1], down_block_additional_residuals=tuple(r[:1] for r in down),
                      mid_block_additional_residual=mid[:1]).sample
        plain = unet2d(x[:1], t[:1], ctx[:1]).sample
    assert (got - want).abs().max() <= 1e-5 and (want - plain).abs().max() > 1e-2
    # a clip: per-frame residuals reach the inflated network's frame-major layers
    shim = VideoDiffusionModel(network.clone())
    with torch.no_grad():
        got = shim(x, t, ctx, control=control)
        core = network._core  # the diffusers call InflatedUNet.forward makes, with the residuals added directly
        from tunevideo.modules.networks.inflate import frame_kwargs
        from tunevideo.modules.networks.norms import FrameScope
        with FrameScope(3):
            direct = core(x, t, ctx, cross_attention_kwargs=frame_kwargs(3, (8, 8)), return_dict=False,
                          down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)[0]
    assert (got - direct).abs().max() <= 1e-5
    assert len(control["output"]) == count  # the host's lists were not consumed


def test_unsupported_control_and_patches_are_refused_by_name(network):
    shim = VideoDiffusionModel(network.clone())
    x, t, ctx = _rand(2, 4, 8, 8), torch.full((2,), 10.0), _rand(1, 5, CTX_DIM).expand(2, 5, CTX_DIM)
    with pytest.raises(ValueError, match="T2I-Adapter"):
        shim(x, t, ctx, control={"input": [_rand(2, 32, 8, 8)], "middle": [], "output": []})
    with pytest.raises(ValueError, match=r"patches \['middle_patch'\].*GLIGEN"):
        shim(x, t, ctx, transformer_options={"patches": {"middle_patch": [object()]}})
    with pytest.raises(ValueError, match=r"patches_replace \['attn1'\]"):
        shim(x, t, ctx, transformer_options={"patches_replace": {"attn1": {("input", 1): object()}}})
    with pytest.raises(ValueError, match="y"):
        shim(x, t, ctx, y=_rand(2, 8))
    with pytest.raises(ValueError, match="inpainting"):
        shim(_rand(2, 9, 8, 8), t, ctx)
    with pytest.raises(ValueError, match="c_adm"):
        shim(x, t, ctx, c_adm=_rand(2, 4))
    assert shim(x, t, ctx, transformer_options={"patches": {}, "patches_replace": {}}).shape == x.shape
    assert control_residuals({"input": [None], "middle": [None], "output": [None, None]}, 12, torch.float32) is None
    short = control_residuals({"output": [_rand(1, 4, 2, 2)]}, 3, torch.float32)
    assert [r.dim() for r in short.down] == [0, 0, 4] and short.mid.dim() == 0  # a short list covers the last skips


def test_park_returns_moved_weights_to_the_shared_storage(network):
    shim = VideoDiffusionModel(network.clone())
    homes = {n: p.data_ptr() for n, p in network.named_parameters()}
    shim.network.to(torch.float64)  # ComfyUI moving/casting the module: new tensors
    assert all(p.data_ptr() != homes[n] for n, p in shim.network.named_parameters())
    shim.park()
    assert all(p.data_ptr() == homes[n] and p.dtype == torch.float32 for n, p in shim.network.named_parameters())
    assert all(p.data_ptr() == homes[n] for n, p in network.named_parameters())  # the VIDEO_UNET was never moved


class _Sampling:
    def __init__(self, s):
        self.sigmas = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().float()


class _Inner:
    model_type = type("T", (), {"name": "EPS"})()

    def __init__(self, s):
        self.model_sampling = _Sampling(s)


class _Model:
    def __init__(self, s):
        self.model = _Inner(s)


def test_inverted_noise_sigmas_node_scales_the_noise_into_sigma_space():
    s = NoiseSchedule.scaled_linear()
    noise = {"samples": _rand(3, 4, 8, 8), INVERTED_KEY: {"steps": 10, "frames": 3, "base_hash": "x"}}
    sigmas, latent = InvertedNoiseSigmas().run(_Model(s), noise, "ddim", "alpha_0", 0)
    top = math.sqrt((1 - s.alpha(s.ddim_timesteps(10)[0])) / s.alpha(s.ddim_timesteps(10)[0]))
    assert float(sigmas[0]) == pytest.approx(top, rel=1e-5) and len(sigmas) == 11
    assert torch.allclose(latent["samples"], noise["samples"] * math.sqrt(1 + top * top))
    assert INVERTED_KEY not in latent
    sigmas, _ = InvertedNoiseSigmas().run(_Model(s), noise, "karras", "zero", 25)
    assert len(sigmas) == 26 and sigmas[-1] == 0
    with pytest.raises(ValueError, match="DDIMInvertVideo"):
        InvertedNoiseSigmas().run(_Model(s), {"samples": noise["samples"]}, "ddim", "alpha_0", 0)


def test_context_windows_in_the_core_wrapper(network):
    """Issue 18's windows through VideoUNetAsModel: one window covering the clip is the windowless call bit for bit
    (ControlNet residuals included); two windows equal the engine's windowed model on each conditioning chunk."""
    from tunevideo.modules.networks.base import ControlResiduals
    from tunevideo.modules.sampling.windows import ContextWindows, windowed

    f = 5
    x, t = _rand(2 * f, 4, 8, 8), torch.full((2 * f,), 300.0)
    ctx = torch.cat([_rand(1, 5, CTX_DIM).expand(f, 5, CTX_DIM), _rand(1, 5, CTX_DIM).expand(f, 5, CTX_DIM)])
    opts = {"cond_or_uncond": [0, 1]}
    res = ControlResiduals(tuple(_rand(2 * f, 32, 8, 8) * 0.1 if i == 0 else torch.zeros(()) for i in range(12)),
                           torch.zeros(()))
    control = {"output": [r if r.dim() else None for r in res.down], "middle": [None]}
    with torch.no_grad():
        plain = VideoDiffusionModel(network.clone())(x, t, ctx, control=control, transformer_options=opts)
        whole = VideoDiffusionModel(network.clone(), windows=ContextWindows(length=8, overlap=2))(
            x, t, ctx, control=control, transformer_options=opts)
        assert torch.equal(plain, whole)
        two = ContextWindows(length=3, overlap=1, fuse="flat")
        got = VideoDiffusionModel(network.clone(), windows=two)(x, t, ctx, transformer_options=opts)
        fn = windowed(lambda v, tt, c: network(v, tt, c), two)
        for k in range(2):
            clip = x[k * f:(k + 1) * f].permute(1, 0, 2, 3)[None]
            want = fn(clip, t[:1], ctx[k * f:k * f + 1])[0].permute(1, 0, 2, 3)
            assert (got[k * f:(k + 1) * f] - want).abs().max() <= 1e-5
    assert not torch.allclose(got, VideoDiffusionModel(network.clone())(x, t, ctx, transformer_options=opts),
                              atol=1e-4)
    picked = res.select_frames([3, 4], f)
    assert torch.equal(picked.down[0], torch.cat([res.down[0][3:5], res.down[0][f + 3:f + 5]]))
    assert picked.mid.dim() == 0
