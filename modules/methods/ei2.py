"""EI²: what the method is, where its layers live, and the covariate-shift measurement.

Its layers are attention variants of the shared networks: STAM's Instance Centering in
:mod:`..networks.norms`, STAM's and FFAM's processors and FFAM's token grids in :mod:`..networks.attention`.

EI² (Zhang et al., "Towards Consistent Video Editing with Text-to-Image Diffusion Models", NeurIPS 2023,
arXiv 2305.17431), Sec. 3 and Fig. 2(c): the temporal layers that inflation adds (Tune-A-Video's ``norm_temp``
LayerNorm + ``attn_temp``) shift the distribution of the features entering the next module (covariate shift), which
harms editing. EI² replaces them with

- **STAM** (shift-restricted temporal attention): an *Instance Centering* layer instead of the LayerNorm, and an
  attention with a *normalised mapping* (:class:`~.attention.StamTemporalAttnProcessor`);
- **FFAM** (fine-coarse frame attention) as spatial self-attention (:class:`~.attention.FineCoarseAttnProcessor`).

What we could and could not read: the abstract, the NeurIPS page and Fig. 2's caption were available; the method
section, its equations and the supplement were not (no full text reachable from this project). Where the paper's
exact definition was not available we chose, and say so here and in README:

- Instance Centering subtracts, at each spatial position and channel, the mean over the clip's frames (the
  "instance" is one position's sequence of frames, the sequence temporal attention sees): ``x - mean_f(x)``. It has
  no scale and no learned affine, so it neither rescales its input (LayerNorm divides by the std and multiplies by a
  learned gain) nor moves it (LayerNorm's learned bias). With it, the values the temporal attention mixes have zero
  mean over frames, so near-uniform attention adds (close to) nothing to the per-position mean of the residual.
- The normalised mapping divides each row of the softmax map by its L2 norm (variance-preserving for uncorrelated
  values; see the processor's docstring).
- FFAM's pooling: average pooling of ``p x p`` patches, ``p`` an input (default 4, our choice: at SD's 64x64 latent
  it divides every level down to the 8x8 mid block; the paper's value was not available).

State-dict keys: STAM keeps ``attn_temp.*`` (same shapes as Tune-A-Video's) and has **no** ``norm_temp`` tensors, so a
STAM delta holds ``attn_temp`` + tuned tensors only; its metadata records ``temporal: stam`` and loading switches
the layer first (:func:`~.checkpoint_io.load_delta`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..networks.inflate import VideoTransformerBlock

# --- covariate shift (EI² Sec. 3's motivation, measured) ---------------------------------------------------------

def block_output_stats(unet, x: torch.Tensor, t, context: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and variance of every inflated transformer block's output (the features entering the next module).

    Returns ``{block name: tensor([mean, var])}``; ``x``: ``[b,c,f,h,w]``."""

    stats, hooks = {}, []

    def hook(name: str) -> Callable:
        def fn(_module, _inputs, out):
            stats[name] = torch.stack([out.float().mean(), out.float().var()])
        return fn

    for name, module in unet.named_modules():
        if isinstance(module, VideoTransformerBlock):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            unet(x, t, context)
    finally:
        for h in hooks:
            h.remove()
    return stats


def covariate_shift(before, after, x: torch.Tensor, t, context: torch.Tensor) -> dict[str, float]:
    """How far tuning moved the features entering each next module: for every transformer block, ``|mean_after -
    mean_before|`` and ``|var_after / var_before - 1|``, averaged over blocks (and their maxima), on the same input.

    ``before``/``after``: the UNet before and after tuning (same architecture)."""
    a = block_output_stats(before, x, t, context)
    b = block_output_stats(after, x, t, context)
    d_mean = torch.stack([(b[k][0] - a[k][0]).abs() for k in a])
    d_var = torch.stack([(b[k][1] / a[k][1] - 1).abs() for k in a])
    return {"mean_shift": float(d_mean.mean()), "mean_shift_max": float(d_mean.max()),
            "var_shift": float(d_var.mean()), "var_shift_max": float(d_var.max()), "blocks": len(a)}
