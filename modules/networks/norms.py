"""Normalisation layers of the video UNets, all sharing their parameters with the 2D model they came from.

- :class:`FrameGroupNorm`: Tune-A-Video's ResNet/output GroupNorm, statistics pooled over a clip's frames.
- :class:`MixedLayerNorm`: the transformers' LayerNorm, float32 under autocast over half weights.
- :class:`InstanceCentering`: EI²'s STAM norm (Zhang et al., NeurIPS 2023, Sec. 3), ``x - mean over frames``.

Layout inside the UNet is frames-as-batch, ``(b f) ...``. :class:`InstanceCentering` gets the frame count as an
argument from its transformer block; :class:`FrameGroupNorm`, called by diffusers' ResNets as ``norm(x)``, reads it
from the :class:`FrameScope` that :meth:`~.inflate.InflatedUNet.forward` opens.
"""

from __future__ import annotations

from contextlib import nullcontext
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


class FrameScope:
    """``with FrameScope(f):`` tells the :class:`FrameGroupNorm` layers run inside it that clips have ``f`` frames.

    Why state at all: the transformer blocks and their processors get the frame count as an argument (through
    diffusers' ``cross_attention_kwargs``), but diffusers' ``ResnetBlock2D`` calls its norms as ``norm(x)`` and its
    ``UNet2DConditionModel`` passes nothing else to the ResNets. So :meth:`~.inflate.InflatedUNet.forward` opens this
    scope around the 2D UNet and closes it on return. Gradient checkpointing re-runs ResNets during backward, after
    the scope has closed: :func:`checkpoint_in_frame_scope` records the frame count at forward time and re-opens the
    scope for the recomputation. The value lives in a ``ContextVar``: nested and concurrent forwards do not mix.
    Reusable (it may be entered again, as a second recomputation would).
    """

    def __init__(self, num_frames: int):
        self.num_frames = int(num_frames)
        self._tokens = []

    def __enter__(self) -> FrameScope:
        self._tokens.append(_FRAMES.set(self.num_frames))
        return self

    def __exit__(self, *exc) -> None:
        _FRAMES.reset(self._tokens.pop())


_FRAMES: ContextVar[int | None] = ContextVar("tunevideo_num_frames", default=None)


def scoped_num_frames() -> int:
    """The frame count of the innermost :class:`FrameScope`; RuntimeError outside one."""
    f = _FRAMES.get()
    if f is None:
        raise RuntimeError("a frame-pooling GroupNorm ran outside InflatedUNet.forward (no FrameScope): call the "
                           "InflatedUNet, not its inner 2D UNet, or wrap the call in FrameScope(num_frames)")
    return f


def checkpoint_in_frame_scope(module: nn.Module, *args):
    """diffusers' ``gradient_checkpointing_func`` for the inflated UNet: non-reentrant checkpointing whose
    recomputation (during backward) runs in the :class:`FrameScope` that was open when the forward ran."""
    f = _FRAMES.get()
    scope = FrameScope(f) if f is not None else nullcontext()
    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), scope))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over ``(b f) c h w`` whose statistics span all frames of a clip (``pool_frames``, the default), or
    each frame alone (``pool_frames=False``, the transformers' norm). Shares its parameters with ``source``.

    Pooled, it equals ``nn.GroupNorm`` applied to ``b c f h w``, as in the reference's ResnetBlock3D and output norm.
    When the input's dtype differs from the weights' (autocast over fp16/bf16 weights) it computes in float32, as
    CUDA autocast does for group_norm; CPU autocast does not, and would fail on the mixed dtypes.
    """

    def __init__(self, source: nn.GroupNorm, pool_frames: bool = True):
        nn.Module.__init__(self)
        self.num_groups, self.num_channels, self.eps, self.affine = (
            source.num_groups, source.num_channels, source.eps, source.affine)
        self._parameters = dict(source._parameters)  # shared with the 2D model
        self.pool_frames = pool_frames

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w is not None and x.dtype != w.dtype:
            x, w, b = x.float(), w.float(), b.float()
        return F.group_norm(x, self.num_groups, w, b, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_frames:
            return self._norm(x)
        f = scoped_num_frames()
        if f == 1:
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

    ``x``: ``[(b f), d, c]`` -> same shape; ``num_frames`` (``f``) comes from the transformer block. No parameters.
    """

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        f = num_frames
        clips = x.reshape(-1, f, *x.shape[1:])
        return (clips - clips.mean(dim=1, keepdim=True)).reshape(x.shape)
