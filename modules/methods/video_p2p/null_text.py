"""Null-text inversion of a video, as Video-P2P runs it.

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models" (CVPR 2023), Sec. 3.2,
Eq. 3-4, applied to video by Video-P2P (Liu et al., 2023, Sec. 3.3, its ``run_videop2p.py``, ``NullInversion``):

1. DDIM-invert the source latents with the *source prompt* and no guidance, keeping every latent
   ``z*_0 .. z*_T`` of the path (:func:`ddim_path`).
2. Walk back from ``z_T = z*_T``. At step ``i`` (timestep ``t_i``, descending) optimise the unconditional embedding
   ``u`` so that one classifier-free-guided DDIM step (guidance ``w`` = 7.5) from ``z`` lands on the inversion latent
   one level lower: ``min_u || DDIM(z, eps_u + w (eps_c - eps_u), t_i) - z*_{T-i-1} ||^2`` (mean over elements).
   Adam, a fresh optimiser per step with lr ``1e-2 (1 - i/100)``, at most 10 updates, stopping once the loss measured
   before an update is below ``1e-5 + 2e-5 i`` (that update is still made). ``u`` starts from the previous step's
   result (step 0: the empty-prompt embedding), is one ``[1, n, d]`` embedding shared by all frames, and is stored
   per step. Then ``z`` takes the guided step with the final ``u``.

Sampling the source prompt with those per-step embeddings (:func:`reconstruct`) retraces the inversion path, which is
what lets prompt-to-prompt editing keep the unedited content. ``fast`` (Video-P2P ``--fast``) skips step 2.

Shapes: latents ``[1, c, f, h, w]`` scaled; ``cond``, ``uncond`` ``[1, n, d]``; ``model(x, t, context)`` the
:class:`~.inflate.InflatedUNet` signature, differentiable in ``context``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...defaults import VP2P
from ...sampling.conditioning import ModelFn
from ...sampling.ddim import guided_output
from ...sampling.schedule import NoiseSchedule, ddim_move

Callback = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class NullTextConfig:
    """Video-P2P's null-text settings (``run_videop2p.py``: NUM_DDIM_STEPS, GUIDANCE_SCALE, ``null_optimization``)."""

    steps: int = VP2P.steps  # NUM_DDIM_STEPS
    guidance: float = VP2P.guidance_scale  # GUIDANCE_SCALE
    inner_steps: int = 10  # num_inner_steps
    early_stop_epsilon: float = 1e-5  # early_stop_epsilon; the threshold grows by 2e-5 per outer step
    learning_rate: float = 1e-2  # Adam lr at step 0, then lr * (1 - i / 100)

    def __post_init__(self):
        if self.steps < 1 or self.inner_steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 1 and inner_steps={self.inner_steps} >= 0")


@dataclass(frozen=True)
class NullTextResult:
    """``noise``: ``z_T`` ``[1,c,f,h,w]``; ``uncond``: per-step embeddings ``[steps, n, d]`` (empty when fast);
    ``path``: the inversion latents ``[steps+1, 1, c, f, h, w]`` from clean to ``z_T``; ``losses``: last inner loss
    per step."""

    noise: torch.Tensor
    uncond: torch.Tensor
    path: torch.Tensor
    losses: tuple[float, ...] = ()


@torch.no_grad()
def ddim_path(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, context: torch.Tensor, steps: int,
              callback: Callback | None = None) -> list[torch.Tensor]:
    """Unguided DDIM inversion keeping every latent: ``[z*_0 = latents, ..., z*_T]`` (``steps + 1`` tensors)."""
    path = [latents.float()]
    t_from = -1
    ts = schedule.ddim_timesteps(steps).flip(0).tolist()
    for i, t in enumerate(ts):
        x = path[-1]
        eps = schedule.to_eps(x, model(x, torch.tensor([t], device=x.device), context).float(), t)
        path.append(ddim_move(schedule, x, eps, t_from, t))
        t_from = t
        if callback is not None:
            callback(i + 1, len(ts), {"timestep": t, "phase": "ddim"})
    return path


def _guided_step(model, schedule, z, t, t_to, u, cond, w):
    """One DDIM step from ``t`` to ``t_to`` with classifier-free guidance ``w`` (one batched call)."""
    out = guided_output(model, z, t, cond, u, w)
    return ddim_move(schedule, z, schedule.to_eps(z, out, t), t, t_to)


def null_text_invert(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, cond: torch.Tensor,
                     uncond: torch.Tensor, config: NullTextConfig = NullTextConfig(), fast: bool = False,
                     callback: Callback | None = None) -> NullTextResult:
    """DDIM inversion + per-step optimisation of the unconditional embedding (module docstring). Pure: inputs are
    never modified. ``callback(step, total, info)`` after each DDIM step and each outer null-text step."""
    if latents.dim() != 5 or latents.shape[0] != 1:
        raise ValueError(f"latents must be one clip [1, c, f, h, w], got shape {tuple(latents.shape)}")
    for name, c in (("cond", cond), ("uncond", uncond)):
        if c.dim() != 3 or c.shape[0] != 1:
            raise ValueError(f"{name} must be [1, n, d] text embeddings, got shape {tuple(c.shape)}")
    with torch.inference_mode(False):
        latents, cond, uncond = (x.detach().clone().float() for x in (latents, cond, uncond))
        total = config.steps * (1 if fast else 2)
        path = ddim_path(model, schedule, latents, cond, config.steps, callback=_offset(callback, 0, total))
        if fast:
            return NullTextResult(path[-1], uncond.new_zeros((0, *uncond.shape[1:])), torch.stack(path))
        ts = schedule.ddim_timesteps(config.steps).tolist()
        z, u = path[-1], uncond
        embeddings, losses = [], []
        for i, t in enumerate(ts):
            t_to = ts[i + 1] if i + 1 < len(ts) else -1
            u, loss = _optimise_step(model, schedule, z, t, t_to, u, cond, path[-2 - i], i, config)
            embeddings.append(u[0])
            losses.append(loss)
            with torch.no_grad():
                z = _guided_step(model, schedule, z, t, t_to, u, cond, config.guidance)
            if callback is not None:
                callback(config.steps + i + 1, total, {"timestep": t, "phase": "null-text", "loss": loss})
    return NullTextResult(path[-1], torch.stack(embeddings), torch.stack(path), tuple(losses))


def _optimise_step(model, schedule, z, t, t_to, u, cond, target, i, config) -> tuple[torch.Tensor, float]:
    """One outer step: Adam on ``u`` (fresh optimiser, decayed lr, early stop). Returns (``u``, last loss)."""
    u = u.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=config.learning_rate * (1.0 - i / 100.0))
    tt = torch.tensor([t], device=z.device)
    with torch.no_grad():
        out_c = model(z, tt, cond).float()
    loss_value = float("nan")
    with torch.enable_grad():
        for _ in range(config.inner_steps):
            out_u = model(z, tt, u).float()
            out = out_u + config.guidance * (out_c - out_u)
            loss = F.mse_loss(ddim_move(schedule, z, schedule.to_eps(z, out, t), t, t_to), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = loss.item()  # the reference's early stop needs the value on the host every inner step
            if loss_value < config.early_stop_epsilon + i * 2e-5:
                break
    return u.detach(), loss_value


def _offset(callback: Callback | None, start: int, total: int) -> Callback | None:
    if callback is None:
        return None
    return lambda step, _, info: callback(start + step, total, info)


@torch.no_grad()
def reconstruct(model: ModelFn, schedule: NoiseSchedule, result: NullTextResult, cond: torch.Tensor,
                guidance: float = 7.5) -> list[torch.Tensor]:
    """Sample the source prompt from ``result.noise`` with the per-step embeddings (``fast``: no guidance, an exact
    DDIM reversal). Returns the latents after each step; the last is the reconstructed clip ``[1,c,f,h,w]``."""
    ts = schedule.ddim_timesteps(result.path.shape[0] - 1).tolist()
    z, out = result.noise, []
    for i, t in enumerate(ts):
        t_to = ts[i + 1] if i + 1 < len(ts) else -1
        if len(result.uncond):
            z = _guided_step(model, schedule, z, t, t_to, result.uncond[i][None], cond, guidance)
        else:
            eps = schedule.to_eps(z, model(z, torch.tensor([t], device=z.device), cond).float(), t)
            z = ddim_move(schedule, z, eps, t, t_to)
        out.append(z)
    return out


def null_text_invert_video(video_unet, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                           config: NullTextConfig = NullTextConfig(), fast: bool = False,
                           device: torch.device | str | None = None, callback: Callback | None = None
                           ) -> NullTextResult:
    """:func:`null_text_invert` with a :class:`~...video_unet.VideoUNet` on ``device``. It runs a private clone of the
    network, whose weights autograd can use even where they were made under ``torch.inference_mode`` (ComfyUI's
    executor loads them so); the input is left untouched."""
    network = video_unet.network.clone(device=device)
    model = video_unet.replace(network=network).model_fn()
    return null_text_invert(model, video_unet.schedule, latents.to(network.device), cond, uncond, config, fast=fast,
                            callback=callback)
