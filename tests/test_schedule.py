"""Noise schedule and DDIM maths, checked against diffusers' DDIMScheduler and an analytic oracle."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo.modules.sampling.ddim import ddim_invert, sample
from tunevideo.modules.sampling.schedule import NoiseSchedule, ddim_move, make_ddim_scheduler


def test_from_sigmas_recovers_alphas():
    s = NoiseSchedule.scaled_linear()
    sigmas = ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt()  # ComfyUI's model_sampling.sigmas
    back = NoiseSchedule.from_sigmas(sigmas.float())
    assert torch.allclose(back.alphas_cumprod, s.alphas_cumprod, rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_timesteps_match_diffusers(steps):
    s = NoiseSchedule.scaled_linear()
    sched = make_ddim_scheduler(s)
    sched.set_timesteps(steps)
    assert s.ddim_timesteps(steps).tolist() == sched.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers(prediction):
    s = NoiseSchedule.scaled_linear(prediction_type=prediction)
    sched = make_ddim_scheduler(s)
    sched.set_timesteps(50)
    x, out = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64), torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    ts = sched.timesteps.tolist()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        ref = sched.step(out, t, x, eta=0.0).prev_sample
        ours = ddim_move(s, x, s.to_eps(x, out, t), t, t_prev)
        assert torch.allclose(ours, ref, atol=1e-6), t


def _oracle(schedule, x0):
    """The exact model of a one-point data distribution at ``x0``."""
    def fn(x, t, c):
        a = schedule.alpha(int(t))
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        return eps if schedule.prediction_type == "epsilon" else a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    return fn


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_inversion_then_sampling_reconstructs_with_oracle(prediction):
    s = NoiseSchedule.scaled_linear(prediction_type=prediction)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.zeros(1, 1, 1)
    errs = []
    for steps in (10, 50, 200):
        fn = _oracle(s, x0)
        x_t = ddim_invert(fn, s, x0, ctx, steps)
        errs.append((sample(fn, s, x_t, ctx, None, steps, cfg=1.0) - x0).abs().max().item())
    assert errs[1] < 0.03 and errs[2] < 0.01  # measured: 0.017 and 0.006
    assert errs[0] > errs[1] > errs[2]  # first-order method: error falls with step count


def test_guidance_is_linear_extrapolation():
    s = NoiseSchedule.scaled_linear()
    calls = []

    def fn(x, t, c):
        calls.append(x.shape[0])
        return c.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1) * torch.ones_like(x)

    x = torch.randn(1, 4, 2, 4, 4)
    cond, uncond = torch.full((1, 3, 2), 1.0), torch.full((1, 3, 2), 0.0)
    a = sample(fn, s, x, cond, uncond, steps=1, cfg=3.0)
    b = sample(fn, s, x, torch.full((1, 3, 2), 3.0), None, steps=1, cfg=1.0)
    assert torch.allclose(a, b) and calls[0] == 2  # one batched call for both branches


def test_bad_inputs_are_named():
    s = NoiseSchedule.scaled_linear()
    with pytest.raises(ValueError, match="latents must be"):
        ddim_invert(lambda *a: None, s, torch.zeros(4, 4, 8, 8), torch.zeros(1, 1, 1), 5)
    with pytest.raises(ValueError, match="negative conditioning batch"):
        sample(lambda *a: None, s, torch.zeros(1, 4, 2, 8, 8), torch.zeros(1, 1, 1), torch.zeros(3, 1, 1), 5)
    with pytest.raises(ValueError, match="steps=0"):
        s.ddim_timesteps(0)
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule.scaled_linear(prediction_type="flow")


class Float64ToDevice(torch.overrides.TorchFunctionMode):
    """Records every float64 tensor sent to a device without being cast first. Apple's MPS has no float64, so such a
    move fails there; on a CPU-only machine it is invisible, hence this check instead of an MPS run."""

    def __init__(self):
        super().__init__()
        self.moves = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        named_device = "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:])
        if func is torch.Tensor.to and named_device and args[0].dtype == torch.float64 and out.dtype == torch.float64:
            self.moves.append(tuple(args[0].shape))
        elif named_device and torch.is_tensor(out) and out.dtype == torch.float64 and func in (
                torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.arange):
            self.moves.append(tuple(out.shape))
        return out


def test_no_float64_tensor_reaches_the_device(tiny_video_model):
    """Apple MPS: the schedule is float64; every tensor the engine moves to the compute device must be cast first."""
    from tunevideo.modules.sampling.ddim import ddim_invert, sample
    from tunevideo.modules.training.tune import TuneConfig, tune

    latents, ctx = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 7, CTX_DIM)
    with Float64ToDevice() as mode:
        tuned, _ = tune(tiny_video_model, latents, ctx, TuneConfig(steps=2, gradient_checkpointing=False),
                        device="cpu")
        fn = tuned.model_fn("cpu")
        noise = ddim_invert(fn, tuned.schedule, latents, ctx, steps=2)
        sample(fn, tuned.schedule, noise, ctx, ctx, steps=2, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert mode.moves == []
