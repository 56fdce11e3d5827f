"""The pack's DDIM grid in ComfyUI's sigma space, so core samplers can start from DDIM-inverted noise.

k-diffusion samplers (Karras et al., NeurIPS 2022), which ComfyUI's KSampler/SamplerCustom run, work on
``x_sigma = x0 + sigma * eps`` with ``sigma_t = sqrt((1 - a_t) / a_t)``; the pack (DDIM, Song et al. 2021) works on
the variance-preserving ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``. Hence ``x_sigma = x_t / sqrt(a_t) =
x_t * sqrt(1 + sigma_t^2)``: inverted noise (VP, at ``tau_0``, the first DDIM timestep, e.g. 981) must be multiplied
by ``sqrt(1 + sigma_{tau_0}^2)`` (about 14.6 for SD) before a core sampler starts from it at ``sigma_{tau_0}``.

With ``eta = 0`` a DDIM step from ``tau_i`` to ``tau_{i+1}`` *is* an Euler step from ``sigma_{tau_i}`` to
``sigma_{tau_{i+1}}`` in that space (ComfyUI's ``ddim`` sampler is Euler), so :func:`sampler_sigmas` reproduces
``SampleVideo`` with any core sampler that takes sigmas. The pack's last DDIM target is ``a_0`` (the "clean" level of
SD's DDIM config, ``set_alpha_to_one=False``), i.e. ``sigma_min``, not 0: ``final="alpha0"`` ends there and the
result is the pack's latent divided by ``sqrt(a_0)`` (:func:`from_sigma_space` maps it back); ``final="zero"`` ends
at 0 like KSampler's ``ddim_uniform`` scheduler.
"""

from __future__ import annotations

import math

import torch

from .ddim import ddim_grid
from .schedule import NoiseSchedule

FINALS = ("alpha0", "zero")
SPACINGS = ("ddim", "karras")


def sigma_at(schedule: NoiseSchedule, t: int) -> float:
    """``sigma_t = sqrt((1 - a_t) / a_t)``; ``t < 0`` is the pack's clean level ``a_0``."""
    a = schedule.alpha(t)
    return math.sqrt((1.0 - a) / a)


def sampler_sigmas(schedule: NoiseSchedule, steps: int, spacing: str = "ddim", final: str = "alpha0",
                   moves: int | None = None, start_step: int = 0) -> torch.Tensor:
    """Descending sigmas for a core sampler that continues from the pack's noise at ``ddim_timesteps(steps)
    [start_step]`` (what ``DDIMInvertVideo`` returns with ``steps``, ``start_step = 0``).

    ``spacing="ddim"``: the DDIM timesteps themselves (``steps - start_step`` moves, exactly ``SampleVideo``'s;
    ``moves`` must then be None or that number); ``"karras"``: ``moves`` (default: as many) moves with Karras et
    al.'s ``rho = 7`` spacing from the same start down to ``sigma_min``. ``final``: ``"alpha0"`` ends at ``sigma_min
    = sigma(a_0)`` like the pack's DDIM; ``"zero"`` ends at 0 like core's schedulers (the last move goes to 0).
    """
    if final not in FINALS:
        raise ValueError(f"final={final!r}; expected one of {FINALS}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r}; expected one of {SPACINGS}")
    grid = ddim_grid(schedule, steps, start_step=start_step)  # [tau_k, ..., tau_{S-1}, -1]
    n = len(grid) - 1 if moves is None else int(moves)
    if n < 1:
        raise ValueError(f"moves={moves} must be at least 1")
    if spacing == "ddim":
        if n != len(grid) - 1:
            raise ValueError(f"ddim spacing follows the inversion's {len(grid) - 1} timesteps; {n} moves need "
                             f"karras spacing (or invert with {n} steps)")
        sigmas = [sigma_at(schedule, t) for t in grid]
        if final == "zero":
            sigmas[-1] = 0.0
    else:
        top, bottom = sigma_at(schedule, grid[0]), sigma_at(schedule, -1)
        sigmas = karras(top, bottom, n) if final == "alpha0" else karras(top, bottom, n - 1) + [0.0]
    return torch.tensor(sigmas, dtype=torch.float32)


def karras(sigma_max: float, sigma_min: float, moves: int, rho: float = 7.0) -> list[float]:
    """``moves + 1`` sigmas from ``sigma_max`` to ``sigma_min`` (both included) with Karras et al.'s Eq. 5 spacing."""
    if moves < 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / moves * (lo - hi)) ** rho for i in range(moves + 1)]


def to_sigma_space(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A VP latent at noise level ``sigma`` -> the same state as a core sampler holds it: ``x * sqrt(1 + sigma^2)``."""
    return x * math.sqrt(1.0 + sigma * sigma)


def from_sigma_space(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Inverse of :func:`to_sigma_space` (a core sampler's result at ``sigma`` -> the pack's VP latent)."""
    return x / math.sqrt(1.0 + sigma * sigma)
