"""Guidance as wrappers of the model: each turns a conditional model ``model(x, t, context)`` into the step model
``model(x, t, i) -> output`` that :func:`~.ddim.ddim_loop` walks, so that no sampler is written twice.

- :func:`guided`: classifier-free guidance (Ho & Salimans, 2022, Eq. 6, in output space) with ComfyUI's combined
  conditioning (:func:`~.conditioning.combined_outputs`: strength-weighted entries, mixed token lengths).
- :func:`two_branch_guided`: Video-P2P's decoupled guidance (Liu et al., 2023, Sec. 3.4, ``run_videop2p.py``): a
  source and an edit branch in one batch ``[uncond_src, uncond_edit, cond_src, cond_edit]``, with per-step contexts.
- Null-text inversion's per-step unconditional embedding is :func:`guided` with ``uncond`` chosen by ``i``
  (:func:`~.null_text.null_text_guided`).

Shapes: ``x`` ``[b, c, f, h, w]`` fp32; contexts ``[1|b, n, d]``; outputs fp32 (eps or v, as the model predicts).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import Conditioning, ModelFn, as_entries, combined_outputs

Cond = torch.Tensor | Conditioning
#: ``model(x [b,c,f,h,w], t, i) -> output`` (eps or v, as the schedule's prediction type), fp32; ``t``: the
#: timestep (int), ``i``: the index of the step in the walked grid (attention controllers and per-step
#: embeddings key on it).
StepModel = Callable[[torch.Tensor, int, int], torch.Tensor]


def cfg_mix(uncond_out: torch.Tensor, cond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in output space: ``u + w (c - u)`` (Ho & Salimans 2022, Eq. 6)."""
    return uncond_out + scale * (cond_out - uncond_out)


def guided_output(model: ModelFn, x: torch.Tensor, t: int, cond: Cond, uncond: Cond | None,
                  cfg: float) -> torch.Tensor:
    """Classifier-free guidance ``u + cfg (c - u)`` in the model's output space, in as few batched calls as the
    token lengths allow (:func:`~.conditioning.combined_outputs`). ``cond``/``uncond``: tensors or entry lists."""
    tt = torch.tensor([t], device=x.device)
    cond = as_entries(cond, "positive conditioning")
    if uncond is None or cfg == 1.0:
        return combined_outputs(model, x, tt, [cond])[0]
    u, c = combined_outputs(model, x, tt, [as_entries(uncond, "negative conditioning"), cond])
    return cfg_mix(u, c, cfg)


def guided(model: ModelFn, cond: Cond, uncond: Cond | None = None, cfg: float = 1.0) -> StepModel:
    """The step model of :func:`guided_output`: the conditional ``model`` with ``cond`` (and ``uncond`` at guidance
    ``cfg``; None or ``cfg = 1``: no guidance, one call)."""
    return lambda x, t, i: guided_output(model, x, t, cond, uncond, cfg)


def two_branch_guided(model: ModelFn, contexts: Callable[[int], torch.Tensor], cfg: float,
                      fast: bool = False) -> StepModel:
    """Two branches ``x`` ``[2, c, f, h, w]`` (source, edit) guided in one call on ``[x, x]`` with
    ``contexts(i)`` ``[4, n, d]`` = ``[uncond_src, uncond_edit, cond_src, cond_edit]`` at step ``i``.

    Returns ``[2, ...]``: ``u + w (c - u)`` per branch; ``fast``: the source branch unguided (its conditional
    output), an exact DDIM reversal of an unguided inversion (Video-P2P ``--fast``).
    """

    def step_model(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.tensor([t], device=x.device), contexts(i)).float()
        u, c = out.chunk(2)
        out = cfg_mix(u, c, cfg)
        return torch.cat([c[:1], out[1:]]) if fast else out

    return step_model
