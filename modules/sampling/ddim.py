"""DDIM inversion and DDIM sampling of video latents.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.3 "Inference": the source video's latents are DDIM-inverted with the
empty prompt to get structure-preserving noise ``x_T``, which is then DDIM-sampled with the edited prompt and
classifier-free guidance (Ho & Salimans, 2022). Both are pure functions over tensors.

Shapes: latents ``[b, c, f, h, w]`` *scaled* (already multiplied by the VAE latent scale), text embeddings
``[b, n, d]`` (or ``[1, n, d]``, broadcast). ``model(x, t, context) -> out`` has the :class:`~.inflate.InflatedUNet`
signature. ``callback(step, total, info)`` is called after every step; raising from it stops the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import Conditioning, ModelFn, as_entries, combined_outputs
from .schedule import NoiseSchedule, ddim_move

Callback = Callable[[int, int, dict], None]
Cond = torch.Tensor | Conditioning


def _entries(conditioning: Cond, b: int, name: str) -> list:
    entries = as_entries(conditioning, name)
    for context, _ in entries:
        if context.shape[0] not in (1, b):
            raise ValueError(f"{name} batch {context.shape[0]} does not match latents batch {b}")
    return entries


def _check_latents(latents: torch.Tensor) -> None:
    if latents.dim() != 5:
        raise ValueError(f"latents must be [b, c, f, h, w], got shape {tuple(latents.shape)}")


@torch.no_grad()
def ddim_invert(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, context: Cond,
                steps: int = 50, callback: Callback | None = None) -> torch.Tensor:
    """DDIM inversion ``x_0 -> x_T`` (eta = 0). Returns ``[b, c, f, h, w]`` at timestep ``ddim_timesteps(steps)[0]``.

    Step ``i`` queries the model at the next timestep ``t_i`` with the current latent (at ``t_{i-1}``), as in the
    reference pipeline's ``ddim_inversion``.
    """
    _check_latents(latents)
    entries = _entries(context, latents.shape[0], "context")
    ts = schedule.ddim_timesteps(steps).flip(0).tolist()
    x = latents.float()
    t_from = -1
    for i, t in enumerate(ts):
        (out,) = combined_outputs(model, x, torch.tensor([t], device=x.device), [entries])
        x = ddim_move(schedule, x, schedule.to_eps(x, out, t), t_from, t)
        t_from = t
        if callback is not None:
            callback(i + 1, len(ts), {"timestep": t})
    return x


def guided_output(model: ModelFn, x: torch.Tensor, t: int, cond: Cond, uncond: Cond | None,
                  cfg: float) -> torch.Tensor:
    """Classifier-free guidance ``u + cfg (c - u)`` in the model's output space, in as few batched calls as the
    token lengths allow (:func:`~.conditioning.combined_outputs`). ``cond``/``uncond``: tensors or entry lists."""
    tt = torch.tensor([t], device=x.device)
    cond = as_entries(cond, "positive conditioning")
    if uncond is None or cfg == 1.0:
        return combined_outputs(model, x, tt, [cond])[0]
    u, c = combined_outputs(model, x, tt, [as_entries(uncond, "negative conditioning"), cond])
    return u + cfg * (c - u)


@torch.no_grad()
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
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step={start_step} must be in 0..{steps}")
    ts = schedule.ddim_timesteps(steps).tolist()[start_step:]
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
