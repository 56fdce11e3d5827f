"""The one DDIM loop (modules/sampling/ddim.py): its steps are ddim_step/ddim_move steps, inversion then sampling
returns to the start, the callback and the hooks see every step, and a partial start skips exactly the first steps."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo.modules.sampling.ddim import ddim_grid, ddim_loop, ddim_step, keep_latents, sample
from tunevideo.modules.sampling.guidance import guided
from tunevideo.modules.sampling.schedule import NoiseSchedule, ddim_move


def _toy(x, t, i):
    """A smooth, step-dependent stand-in for a model: output depends on x, t and i."""
    return 0.1 * torch.tanh(x) + 1e-4 * t + 0.01 * i


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("invert", [False, True])
def test_k_loop_steps_equal_k_manual_ddim_moves(prediction, invert):
    s = NoiseSchedule.scaled_linear(prediction_type=prediction)
    grid = ddim_grid(s, 6, invert=invert)
    x0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for k in (1, 3, 6):
        x = x0
        for i in range(k):
            t = max(grid[i], grid[i + 1])  # the model is queried at the noisier end of the step
            eps = s.to_eps(x, _toy(x, t, i), t)
            x = ddim_move(s, x, eps, grid[i], grid[i + 1])
        assert torch.equal(ddim_loop(_toy, s, x0, grid[:k + 1]), x)


def test_eta_noise_comes_from_the_generator_once_per_denoising_step():
    s = NoiseSchedule.scaled_linear()
    grid = ddim_grid(s, 3)
    x0 = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    x = x0
    for i in range(3):
        z = torch.randn(x.shape, generator=g)
        x = ddim_step(s, x, _toy(x, grid[i], i), grid[i], grid[i + 1], eta=0.5, noise=z)
    out = ddim_loop(_toy, s, x0, grid, eta=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, x)
    assert not torch.equal(out, ddim_loop(_toy, s, x0, grid))


def test_inversion_then_sampling_returns_to_the_start(tiny_video_model):
    # As in test_inversion.py: a random UNet's output layer scaled down to a trained model's gentleness.
    unet = tiny_video_model.network.clone()
    with torch.no_grad():
        unet.conv_out.weight.data = unet.conv_out.weight.data * 0.1
        unet.conv_out.bias.data = unet.conv_out.bias.data * 0.1
    fn, s = tiny_video_model.replace(network=unet).model_fn(), tiny_video_model.schedule
    g = torch.Generator().manual_seed(0)
    x0, ctx = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 7, CTX_DIM, generator=g)
    model = guided(fn, ctx)  # cfg 1: the same model both ways
    x_t = ddim_loop(model, s, x0, ddim_grid(s, 20, invert=True))
    rec = ddim_loop(model, s, x_t, ddim_grid(s, 20))
    assert ((rec - x0).norm() / x0.norm()).item() < 0.08
    assert ((x_t - x0).norm() / x0.norm()).item() > 0.5  # the walk went somewhere


def test_callback_and_hook_see_every_step_in_order():
    s = NoiseSchedule.scaled_linear()
    grid = ddim_grid(s, 5)
    seen, steps, path = [], [], []
    x0 = torch.zeros(1, 4, 1, 2, 2)

    def model(x, t, i):
        steps.append((t, i))
        return torch.zeros_like(x)

    out = ddim_loop(model, s, x0, grid, callback=lambda i, n, info: seen.append((i, n, info["timestep"])),
                    after_step=keep_latents(path))
    assert seen == [(i + 1, 5, t) for i, t in enumerate(grid[:-1])]
    assert steps == [(t, i) for i, t in enumerate(grid[:-1])]
    assert len(path) == 5 and path[-1] is out
    inv = []
    ddim_loop(model, s, x0, ddim_grid(s, 5, invert=True), callback=lambda i, n, info: inv.append(info["timestep"]))
    assert inv == grid[:-1][::-1]  # inversion queries the next (noisier) timestep


def test_after_step_hook_changes_the_walk():
    s = NoiseSchedule.scaled_linear()
    x0 = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = ddim_loop(_toy, s, x0, ddim_grid(s, 4), after_step=lambda i, x: torch.zeros_like(x) if i == 3 else x)
    assert torch.equal(out, torch.zeros_like(x0))


def test_start_step_skips_exactly_the_first_steps():
    s = NoiseSchedule.scaled_linear()
    full = ddim_grid(s, 6)
    assert ddim_grid(s, 6, start_step=2) == full[2:] and ddim_grid(s, 6, start_step=6) == [-1]
    x0 = torch.randn(1, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    mid = []
    ddim_loop(_toy, s, x0, full[:3], after_step=keep_latents(mid))  # the first two steps of the full walk
    # The tail walk starts at full[2] with its own step indices 0.. (the model sees i relative to the grid walked).
    shifted = lambda x, t, i: _toy(x, t, i + 2)  # noqa: E731
    assert torch.equal(ddim_loop(shifted, s, mid[-1], full[2:]), ddim_loop(_toy, s, x0, full))
    with pytest.raises(ValueError, match="start_step=7"):
        ddim_grid(s, 6, start_step=7)
    queried = []
    sample(lambda x, t, c: queried.append(int(t)) or torch.zeros_like(x), s, x0, torch.zeros(1, 3, 8), None, steps=6,
           cfg=1.0, start_step=2)
    assert queried == full[2:-1]
