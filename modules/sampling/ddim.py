"""The pack's one DDIM loop, and DDIM inversion and sampling of video latents built on it.

DDIM (Song et al., ICLR 2021), Eq. 12, walked over a grid of timesteps ``tau_0, tau_1, ..., tau_S``: step ``i``
moves ``x`` from level ``tau_i`` to ``tau_{i+1}`` with the model's ``eps_theta`` (:func:`ddim_step`,
:func:`~.schedule.ddim_move`). A descending grid ending at ``-1`` (clean) samples; an ascending grid starting at
``-1`` with ``eta = 0`` is DDIM inversion (Tune-A-Video, Wu et al., ICCV 2023, Sec. 4.3; Mokady et al., CVPR 2023,
Eq. 3), which queries the model at the *next*, noisier level with the current latent, as the reference pipelines'
``ddim_inversion`` does. In both directions the model is queried at ``max(tau_i, tau_{i+1})``.

Like k-diffusion's samplers (``fn(model, x, sigmas, extra_args, callback)``), :func:`ddim_loop` has one signature
and knows nothing of prompts: guidance is a *wrapper* (:mod:`.guidance`) that turns a conditional model into the step
model ``model(x, t, i) -> output``; per-step work after the move (keeping the path, Video-P2P's local blend) is an
``after_step`` hook. :func:`ddim_invert`, :func:`sample` (with Dreamix's partial start), null-text inversion's path,
outer walk and reconstruction, and Video-P2P's two-branch sampling all run this loop.

Shapes: latents ``[b, c, f, h, w]`` *scaled* (already multiplied by the VAE latent scale), text embeddings
``[b, n, d]`` (or ``[1, n, d]``, broadcast). A conditional model ``model(x, t, context) -> out`` has the
:class:`~.inflate.InflatedUNet` signature. ``callback(step, total, info)`` is called after every step; raising from
it stops the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .conditioning import ModelFn, as_entries
from .guidance import Cond, StepModel, guided
from .schedule import NoiseSchedule, ddim_move

Callback = Callable[[int, int, dict], None]
#: ``after_step(i, x) -> x``: runs after step ``i``'s move (before the callback); may return a changed latent.
AfterStep = Callable[[int, torch.Tensor], torch.Tensor]


def ddim_step(schedule: NoiseSchedule, x: torch.Tensor, out: torch.Tensor, t: int, t_to: int, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM move of ``x`` from level ``t`` to ``t_to`` given the model output ``out``, which was queried at
    ``max(t, t_to)`` (the loop's rule): ``out -> eps_hat`` (v-prediction converted), then Eq. 12."""
    return ddim_move(schedule, x, schedule.to_eps(x, out, max(t, t_to)), t, t_to, eta=eta, noise=noise)


def ddim_grid(schedule: NoiseSchedule, steps: int, invert: bool = False, start_step: int = 0) -> list[int]:
    """The grid :func:`ddim_loop` walks: ``[tau_k, ..., tau_{S-1}, -1]`` for sampling from step ``k =
    start_step`` of the ``steps``-step DDIM timesteps, ``[-1, ..., tau_0]`` (ascending) for inversion."""
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step={start_step} must be in 0..{steps}")
    ts = schedule.ddim_timesteps(steps).tolist()
    return [-1] + ts[::-1] if invert else ts[start_step:] + [-1]


@torch.no_grad()
def ddim_loop(model: StepModel, schedule: NoiseSchedule, x: torch.Tensor, timesteps: Sequence[int],
              callback: Callback | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
              after_step: AfterStep | None = None) -> torch.Tensor:
    """Walk ``x`` (fp32, at level ``timesteps[0]``) over ``timesteps``; returns the latent at ``timesteps[-1]``.

    Step ``i`` of ``S = len(timesteps) - 1``: ``out = model(x, t, i)`` with ``t = max(tau_i, tau_{i+1})``, then
    ``x = ddim_step(schedule, x, out, tau_i, tau_{i+1}, eta, z)``; ``z ~ N(0, I)`` from ``generator`` (drawn only when
    ``eta > 0`` and the step denoises), then ``x = after_step(i, x)``, then ``callback(i + 1, S, {"timestep": t})``.
    Gradients are off (an optimiser inside ``model`` turns them on for itself).
    """
    x = x.float()
    total = len(timesteps) - 1
    for i in range(total):
        t_from, t_to = int(timesteps[i]), int(timesteps[i + 1])
        t = max(t_from, t_to)
        out = model(x, t, i)
        noise = None
        if eta > 0 and t_to < t_from:
            noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else "cpu")
            noise = noise.to(x.device)
        x = ddim_step(schedule, x, out, t_from, t_to, eta=eta, noise=noise)
        if after_step is not None:
            x = after_step(i, x)
        if callback is not None:
            callback(i + 1, total, {"timestep": t})
    return x


def keep_latents(into: list[torch.Tensor]) -> AfterStep:
    """An ``after_step`` hook that appends every step's latent to ``into`` (and changes nothing)."""

    def keep(i: int, x: torch.Tensor) -> torch.Tensor:
        into.append(x)
        return x

    return keep


def _entries(conditioning: Cond, b: int, name: str) -> list:
    entries = as_entries(conditioning, name)
    for context, _ in entries:
        if context.shape[0] not in (1, b):
            raise ValueError(f"{name} batch {context.shape[0]} does not match latents batch {b}")
    return entries


def _check_latents(latents: torch.Tensor) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents must be [b, c, f, h, w], got shape {tuple(latents.shape)}")


def ddim_invert(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, context: Cond,
                steps: int = 50, callback: Callback | None = None) -> torch.Tensor:
    """DDIM inversion ``x_0 -> x_T`` (eta = 0). Returns ``[b, c, f, h, w]`` at timestep ``ddim_timesteps(steps)[0]``.

    Step ``i`` queries the model at the next timestep ``t_i`` with the current latent (at ``t_{i-1}``), as in the
    reference pipeline's ``ddim_inversion``.
    """
    _check_latents(latents)
    entries = _entries(context, latents.shape[0], "context")
    return ddim_loop(guided(model, entries), schedule, latents, ddim_grid(schedule, steps, invert=True), callback)


def sample(model: ModelFn, schedule: NoiseSchedule, x_t: torch.Tensor, cond: Cond,
           uncond: Cond | None = None, steps: int = 50, cfg: float = 12.5, eta: float = 0.0,
           generator: torch.Generator | None = None, callback: Callback | None = None,
           start_step: int = 0) -> torch.Tensor:
    """DDIM sampling from ``x_t`` (noise at ``ddim_timesteps(steps)[start_step]``) to clean latents ``[b,c,f,h,w]``.

    Args:
        cond, uncond: ``[b|1, n, d]`` positive / negative embeddings, or lists of ``(embeddings, strength)``
            entries whose predictions are averaged (ComfyUI's Conditioning Combine); token counts may differ.
            ``uncond`` may be None (no guidance).
        cfg: guidance scale (Tune-A-Video uses 12.5); 1 disables guidance.
        eta: DDIM stochasticity (0 = deterministic); noise drawn from ``generator``.
        start_step: skip the first ``start_step`` timesteps of the ``steps``-step grid (SDEdit-style partial
            denoising, Dreamix Sec. 3.1); ``x_t`` must then be at ``ddim_timesteps(steps)[start_step]``.
    """
    _check_latents(x_t)
    b = x_t.shape[0]
    cond = _entries(cond, b, "positive conditioning")
    uncond = None if uncond is None else _entries(uncond, b, "negative conditioning")
    grid = ddim_grid(schedule, steps, start_step=start_step)
    return ddim_loop(guided(model, cond, uncond, cfg), schedule, x_t, grid, callback, eta=eta, generator=generator)
