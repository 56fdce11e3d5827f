"""Null-text inversion of a video, as Video-P2P runs it.

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models" (CVPR 2023), Sec. 3.2,
Eq. 3-4, applied to video by Video-P2P (Liu et al., 2023, Sec. 3.3, its ``run_videop2p.py``, ``NullInversion``):

1. DDIM-invert the source latents with the *source prompt* and no guidance, keeping every latent
   ``z*_0 .. z*_T`` of the path (:func:`ddim_path`).
2. Walk back from ``z_T = z*_T``. At step ``i`` (timestep ``t_i``, descending) optimise the unconditional embedding
   ``u`` so that one classifier-free-guided DDIM step (scale ``w`` = 7.5, ``cfg`` in the code) from ``z`` lands on
   the inversion latent one level lower: ``min_u || DDIM(z, eps_u + w (eps_c - eps_u), t_i) - z*_{T-i-1} ||^2``
   (mean over elements).
   Adam, a fresh optimiser per step with lr ``1e-2 (1 - i/100)``, at most 10 updates, stopping once the loss measured
   before an update is below ``1e-5 + 2e-5 i`` (that update is still made). ``u`` starts from the previous step's
   result (step 0: the empty-prompt embedding), is one ``[1, n, d]`` embedding shared by all frames, and is stored
   per step. Then ``z`` takes the guided step with the final ``u``.

Sampling the source prompt with those per-step embeddings (:func:`reconstruct`) retraces the inversion path, which is
what lets prompt-to-prompt editing keep the unedited content. ``fast`` (Video-P2P ``--fast``) skips step 2.
The path, the outer walk and the reconstruction are the pack's one DDIM loop (:func:`~.ddim.ddim_loop`); the guidance
with per-step embeddings is one model wrapper (:func:`null_text_guided`), and the optimiser shares the loop's step
maths (:func:`~.ddim.ddim_step`, :func:`~.guidance.cfg_mix`).

Shapes: latents ``[1, c, f, h, w]`` scaled; ``cond``, ``uncond`` ``[1, n, d]``; ``model(x, t, context)`` the
:class:`~.inflate.InflatedUNet` signature, differentiable in ``context``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...defaults import VP2P
from ...sampling.conditioning import ModelFn
from ...sampling.ddim import ddim_grid, ddim_loop, ddim_step, keep_latents
from ...sampling.guidance import StepModel, cfg_mix, guided, guided_output
from ...sampling.schedule import NoiseSchedule
from ...sampling.windows import ContextWindows, WindowHook

Callback = Callable[[int, int, dict], None]


@dataclass(frozen=True)
class NullTextConfig:
    """Video-P2P's null-text settings (``run_videop2p.py``: NUM_DDIM_STEPS, GUIDANCE_SCALE, ``null_optimization``)."""

    steps: int = VP2P.steps  # NUM_DDIM_STEPS
    cfg: float = VP2P.guidance_scale  # GUIDANCE_SCALE
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


def ddim_path(model: ModelFn, schedule: NoiseSchedule, latents: torch.Tensor, context: torch.Tensor, steps: int,
              callback: Callback | None = None) -> list[torch.Tensor]:
    """Unguided DDIM inversion keeping every latent: ``[z*_0 = latents, ..., z*_T]`` (``steps + 1`` tensors)."""
    path = [latents.float()]
    ddim_loop(guided(model, context), schedule, path[0], ddim_grid(schedule, steps, invert=True),
              _tagged(callback, "ddim"), after_step=keep_latents(path))
    return path


def null_text_guided(model: ModelFn, cond: torch.Tensor, embeddings: torch.Tensor | Sequence[torch.Tensor],
                     cfg: float) -> StepModel:
    """Classifier-free guidance whose unconditional embedding at step ``i`` is ``embeddings[i]`` ``[n, d]`` (the
    null-text result ``[steps, n, d]``, or the list the optimisation fills step by step)."""
    return lambda x, t, i: guided_output(model, x, t, cond, embeddings[i][None], cfg)


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
        grid = ddim_grid(schedule, config.steps)
        embeddings, losses = [], []  # per step: u [n, d], last inner loss
        guide = null_text_guided(model, cond, embeddings, config.cfg)

        def optimised(z, t, i):
            """Optimise ``u`` for step ``i``, then guide the step with it (the loop makes the move)."""
            u = embeddings[-1][None] if embeddings else uncond
            u, loss = _optimise_step(model, schedule, z, t, grid[i + 1], u, cond, path[-2 - i], i, config)
            embeddings.append(u[0])
            losses.append(loss)
            return guide(z, t, i)

        def report(step, _, info):
            callback(config.steps + step, total, {**info, "phase": "null-text", "loss": losses[-1]})

        ddim_loop(optimised, schedule, path[-1], grid, report if callback is not None else None)
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
            out = cfg_mix(out_u, out_c, config.cfg)
            loss = F.mse_loss(ddim_step(schedule, z, out, t, t_to), target)
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


def _tagged(callback: Callback | None, phase: str) -> Callback | None:
    """``callback`` with ``info["phase"] = phase``."""
    if callback is None:
        return None
    return lambda step, total, info: callback(step, total, {**info, "phase": phase})


def reconstruct(model: ModelFn, schedule: NoiseSchedule, result: NullTextResult, cond: torch.Tensor,
                cfg: float = VP2P.guidance_scale) -> list[torch.Tensor]:
    """Sample the source prompt from ``result.noise`` with the per-step embeddings (``fast``: no guidance, an exact
    DDIM reversal). Returns the latents after each step; the last is the reconstructed clip ``[1,c,f,h,w]``."""
    steps = result.path.shape[0] - 1
    if len(result.uncond):
        step_model = null_text_guided(model, cond, result.uncond, cfg)
    else:
        step_model = guided(model, cond)
    out: list[torch.Tensor] = []
    ddim_loop(step_model, schedule, result.noise, ddim_grid(schedule, steps), after_step=keep_latents(out))
    return out


def null_text_invert_video(video_unet, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                           config: NullTextConfig = NullTextConfig(), fast: bool = False,
                           device: torch.device | str | None = None, callback: Callback | None = None,
                           windows: ContextWindows | None = None, on_window: WindowHook | None = None
                           ) -> NullTextResult:
    """:func:`null_text_invert` with a :class:`~...video_unet.VideoUNet` on ``device``. It runs a private clone of the
    network, whose weights autograd can use even where they were made under ``torch.inference_mode`` (ComfyUI's
    executor loads them so); the input is left untouched. ``windows``: context windows for long clips (every model
    call of the inversion and of the optimisation is windowed; the edit must sample with the same windows)."""
    network = video_unet.network.clone(device=device)
    model = video_unet.replace(network=network).model_fn(windows=windows, on_window=on_window)
    return null_text_invert(model, video_unet.schedule, latents.to(network.device), cond, uncond, config, fast=fast,
                            callback=callback)
