"""Noise schedules and DDIM updates.

DDIM (Song et al., ICLR 2021), Eq. 12: with ``a_t`` = alphas_cumprod[t],
``x_prev = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps_hat + sigma_t * z`` and
``sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)``.
With ``eta = 0`` the same update run towards larger ``t`` is DDIM inversion (Tune-A-Video Sec. 4.3; Mokady et al.
2023, Eq. 3). ``v``-prediction (Salimans & Ho, 2022) is turned into ``(x0_hat, eps_hat)`` first.

The schedule comes from the host model: ComfyUI's ``model_sampling.sigmas`` are ``sqrt((1 - a_t) / a_t)``, so
``a_t = 1 / (1 + sigma_t^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a diffusion model.

    Attributes:
        alphas_cumprod: ``[T]`` float64, ``a_t`` for ``t = 0..T-1``.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
    """

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        a = self.alphas_cumprod
        if a.dim() != 1 or len(a) < 2 or not bool(((a > 0) & (a < 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D tensor of values in (0, 1)")

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, prediction_type: str = "epsilon") -> NoiseSchedule:
        """From ComfyUI's ``model.model.model_sampling.sigmas`` (``[T]``, ascending)."""
        s = sigmas.detach().to("cpu", torch.float64)
        return cls(1.0 / (1.0 + s * s), prediction_type)

    @classmethod
    def scaled_linear(cls, beta_start=0.00085, beta_end=0.012, steps=1000, prediction_type="epsilon"):
        """Stable Diffusion's training schedule (``scaled_linear`` betas)."""
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, 0), prediction_type)

    def ddim_timesteps(self, num_steps: int) -> torch.Tensor:
        """Descending DDIM timesteps, ``leading`` spacing with offset 1 as in SD's scheduler config.

        50 steps of a 1000-step schedule give ``[981, 961, ..., 1]``.
        """
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"steps={num_steps} must be in 1..{self.num_train_timesteps}")
        ratio = self.num_train_timesteps // num_steps
        return (torch.arange(num_steps) * ratio + 1).clamp(max=self.num_train_timesteps - 1).flip(0)

    def alpha(self, t: int) -> float:
        """``a_t``; ``t < 0`` means "clean": ``a_0`` (``set_alpha_to_one=False`` in SD's DDIM config)."""
        return float(self.alphas_cumprod[max(int(t), 0)])

    def to_eps(self, x: torch.Tensor, out: torch.Tensor, t: int) -> torch.Tensor:
        """Model output for input ``x`` queried at timestep ``t`` -> ``eps_hat``.

        For ``v``-prediction: ``eps = sqrt(a) v + sqrt(1-a) x``.
        """
        if self.prediction_type == "epsilon":
            return out
        a = self.alpha(t)
        return a ** 0.5 * out + (1 - a) ** 0.5 * x

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model learns to output at ``t``: ``noise`` or ``v = sqrt(a) noise - sqrt(1-a) x0``."""
        if self.prediction_type == "epsilon":
            return noise
        a = self._gather(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``; ``t``: ``[b]`` for ``x0``: ``[b, ...]``."""
        a = self._gather(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def _gather(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # Cast before the move: Apple's MPS has no float64.
        a = self.alphas_cumprod.to(like.dtype).to(like.device)[t.to(like.device)]
        return a.reshape(-1, *([1] * (like.dim() - 1)))


def ddim_move(schedule: NoiseSchedule, x: torch.Tensor, eps: torch.Tensor, t: int, t_to: int,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update of ``x`` (at noise level ``t``) to level ``t_to`` given ``eps_hat``.

    ``t_to < t`` denoises (Eq. 12); ``t_to > t`` with ``eta = 0`` is the inversion step. ``t < 0`` means clean.
    """
    a_t, a_to = schedule.alpha(t), schedule.alpha(t_to)
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    sigma = 0.0
    if eta > 0 and t_to < t:
        sigma = eta * ((1 - a_to) / (1 - a_t)) ** 0.5 * (1 - a_t / a_to) ** 0.5
    x_to = a_to ** 0.5 * x0 + max(1 - a_to - sigma ** 2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        x_to = x_to + sigma * noise
    return x_to


def make_ddim_scheduler(schedule: NoiseSchedule):
    """A diffusers ``DDIMScheduler`` with this schedule and SD's DDIM settings, for code that wants one."""
    from diffusers import DDIMScheduler

    a = schedule.alphas_cumprod
    betas = 1 - a / torch.cat([a.new_ones(1), a[:-1]])
    return DDIMScheduler(
        num_train_timesteps=len(a), trained_betas=betas.float().numpy(), clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=schedule.prediction_type,
    )
