"""DDIM inversion and DDIM sampling of video latents.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.3 "Inference": the source video's latents are DDIM-inverted with the
empty prompt to get structure-preserving noise ``x_T``, which is then DDIM-sampled with the edited prompt and
classifier-free guidance (Ho & Salimans, 2022). Both are pure functions over tensors.

Shapes: latents ``[b, c, f, h, w]`` *scaled* (already multiplied by the VAE latent scale), text embeddings
``[b, n, d]`` (or ``[1, n, d]``, broadcast). ``model(x, t, context) -> out`` has the :class:`~.inflate.VideoUNet`
signature. ``callback(step, total, info)`` is called after every step; raising from it stops the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedule import NoiseSchedule, ddim_move

Callback = Callable[[int, int, dict], None]
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _expand(context: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if context.dim() != 3:
        raise ValueError(f"{name} must be [b, n, d] text embeddings, got shape {tuple(context.shape)}")
    if context.shape[0] == b:
        return context
    if context.shape[0] == 1:
        return context.expand(b, -1, -1)
    raise ValueError(f"{name} batch {context.shape[0]} does not match latents batch {b}")


def _check_latents(latents: torch.Tensor) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents must be [b, c, f, h, w], got shape {tuple(latents.shape)}")


@torch.no_grad()
def ddim_invert(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, context: torch.Tensor,
                steps: int = 50, callback: Callback | None = None) -> torch.Tensor:
    """DDIM inversion ``x_0 -> x_T`` (eta = 0). Returns ``[b, c, f, h, w]`` at timestep ``ddim_timesteps(steps)[0]``.

    Step ``i`` queries the model at the next timestep ``t_i`` with the current latent (at ``t_{i-1}``), as in the
    reference pipeline's ``ddim_inversion``.
    """
    _check_latents(latents)
    context = _expand(context, latents.shape[0], "context")
    ts = schedule.ddim_timesteps(steps).flip(0).tolist()
    x = latents.float()
    t_from = -1
    for i, t in enumerate(ts):
        out = model(x, torch.tensor([t], device=x.device), context).float()
        x = ddim_move(schedule, x, schedule.to_eps(x, out, t), t_from, t)
        t_from = t
        if callback is not None:
            callback(i + 1, len(ts), {"timestep": t})
    return x


def guided_output(model: ModelFn, x: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor | None,
                  cfg: float) -> torch.Tensor:
    """Classifier-free guidance ``u + cfg (c - u)`` in the model's output space, one batched call."""
    tt = torch.tensor([t], device=x.device)
    if uncond is None or cfg == 1.0:
        return model(x, tt, cond).float()
    out = model(torch.cat([x, x]), tt, torch.cat([uncond, cond])).float()
    u, c = out.chunk(2)
    return u + cfg * (c - u)


@torch.no_grad()
def sample(model: ModelFn, schedule: NoiseSchedule, x_t: torch.Tensor, cond: torch.Tensor,
           uncond: torch.Tensor | None = None, steps: int = 50, cfg: float = 12.5, eta: float = 0.0,
           generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM sampling from ``x_t`` (noise at ``ddim_timesteps(steps)[0]``) to clean latents ``[b, c, f, h, w]``.

    Args:
        cond, uncond: ``[b|1, n, d]`` positive / negative embeddings; ``uncond`` may be None (no guidance).
        cfg: guidance scale (Tune-A-Video uses 12.5); 1 disables guidance.
        eta: DDIM stochasticity (0 = deterministic); noise drawn from ``generator``.
    """
    _check_latents(x_t)
    b = x_t.shape[0]
    cond = _expand(cond, b, "positive conditioning")
    uncond = None if uncond is None else _expand(uncond, b, "negative conditioning")
    ts = schedule.ddim_timesteps(steps).tolist()
    x = x_t.float()
    for i, t in enumerate(ts):
        t_to = ts[i + 1] if i + 1 < len(ts) else -1
        out = guided_output(model, x, t, cond, uncond, cfg)
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else "cpu")
            noise = noise.to(x.device)
        x = ddim_move(schedule, x, schedule.to_eps(x, out, t), t, t_to, eta=eta, noise=noise)
        if callback is not None:
            callback(i + 1, len(ts), {"timestep": t})
    return x
