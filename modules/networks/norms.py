"""Normalisation layers of the video UNets, all sharing their parameters with the 2D model they came from.

- :class:`FrameGroupNorm`: Tune-A-Video's ResNet/output GroupNorm, statistics pooled over a clip's frames.
- :class:`MixedLayerNorm`: the transformers' LayerNorm, float32 under autocast over half weights.
- :class:`InstanceCentering`: EI²'s STAM norm (Zhang et al., NeurIPS 2023, Sec. 3), ``x - mean over frames``.

Layout inside the UNet is frames-as-batch, ``(b f) ...``; :class:`FrameContext` says how many frames a clip has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FrameContext:
    """Per-model state read by layers that must know the clip length: set by :meth:`InflatedUNet.forward`."""

    def __init__(self) -> None:
        self.num_frames = 1
        self.latent_size = (0, 0)  # (h, w) of the latent in the current forward (FFAM's token grids)
        self.temporal = True  # False: temporal layers bypassed, frames are independent images (Dreamix)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over ``(b f) c h w`` whose statistics span all frames of a clip (``pool_frames``, the default), or
    each frame alone (``pool_frames=False``, the transformers' norm). Shares its parameters with ``source``.

    Pooled, it equals ``nn.GroupNorm`` applied to ``b c f h w``, as in the reference's ResnetBlock3D and output norm.
    When the input's dtype differs from the weights' (autocast over fp16/bf16 weights) it computes in float32, as
    CUDA autocast does for group_norm; CPU autocast does not, and would fail on the mixed dtypes.
    """

    def __init__(self, source: nn.GroupNorm, context: FrameContext, pool_frames: bool = True):
        nn.Module.__init__(self)
        self.num_groups, self.num_channels, self.eps, self.affine = (
            source.num_groups, source.num_channels, source.eps, source.affine)
        self._parameters = dict(source._parameters)  # shared with the 2D model
        self.context = context
        self.pool_frames = pool_frames

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w is not None and x.dtype != w.dtype:
            x, w, b = x.float(), w.float(), b.float()
        return F.group_norm(x, self.num_groups, w, b, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.context.num_frames
        if f == 1 or not self.pool_frames:
            return self._norm(x)
        video = self._norm(rearrange(x, "(b f) c h w -> b c f h w", f=f))
        return rearrange(video, "b c f h w -> (b f) c h w")


class MixedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` sharing ``source``'s parameters that, like CUDA autocast, computes in float32 when the input's
    dtype differs from the weights' (CPU autocast leaves layer_norm alone and fails on the mixed dtypes)."""

    def __init__(self, source: nn.LayerNorm):
        nn.Module.__init__(self)
        self.normalized_shape, self.eps, self.elementwise_affine = (
            source.normalized_shape, source.eps, source.elementwise_affine)
        self._parameters = dict(source._parameters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w is not None and x.dtype != w.dtype:
            x, w, b = x.float(), w.float(), None if b is None else b.float()
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class InstanceCentering(nn.Module):
    """EI² Instance Centering (replaces ``norm_temp``): ``x - mean over frames``, per position and channel.

    ``x``: ``[(b f), d, c]`` -> same shape. ``context`` is the model's frame context (``num_frames``). No parameters.
    """

    def __init__(self, context):
        super().__init__()
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.context.num_frames
        clips = x.reshape(-1, f, *x.shape[1:])
        return (clips - clips.mean(dim=1, keepdim=True)).reshape(x.shape)
