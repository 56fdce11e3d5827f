"""What every space-time network of the pack is, whichever base it came from.

:class:`VideoNetwork` is the interface the samplers, tuning loops, file readers and nodes rely on; its two
implementations are :class:`~.inflate.InflatedUNet` (an SD UNet inflated as in Tune-A-Video) and
:class:`~.animatediff.MotionUNet` (an SD UNet with an AnimateDiff motion module). The helpers below build networks
that *share* the 2D weights with the model they came from (:func:`share_clone`, :func:`retarget`) and give single
tensors their own copies when tuning changes them (:func:`own_parameter`).
"""

from __future__ import annotations

import copy

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from .norms import FrameContext


def share_clone(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers are the *same objects*.

    Replacing a submodule or a processor in the copy leaves the original untouched; the weights stay shared.
    """
    new = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, dict) and (name in ("_parameters", "_buffers") or "hook" in name):
            new.__dict__[name] = type(value)(value)
    new._modules = {k: (share_clone(v) if v is not None else None) for k, v in module._modules.items()}
    return new


class VideoNetwork(nn.Module):
    """What every video UNet of the pack shares: it wraps a diffusers UNet (``_core``) whose children are registered
    as its own (so ``state_dict()`` keys are the core's), and exposes its config, dtype, device, training mode and
    gradient checkpointing. Subclasses: :class:`InflatedUNet` (inflated), :class:`~.animatediff.MotionUNet`."""

    def __init__(self, core: nn.Module):
        super().__init__()
        for name, child in core.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_core", core)  # not a child: its children are ours already

    @property
    def config(self):
        return self._core.config

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def train(self, mode: bool = True):
        self._core.training = mode
        return super().train(mode)

    def enable_gradient_checkpointing(self) -> None:
        self._core.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self._core.disable_gradient_checkpointing()


def retarget(core: nn.Module, device=None, dtype=None, context: FrameContext | None = None) -> None:
    """Give every parameter and buffer of ``core`` (a :func:`share_clone` copy) a new ``Parameter``/tensor, on
    ``device``/``dtype`` where given (storage shared otherwise), and every attention module its own processor
    object; layers that read a :class:`FrameContext` get ``context``. Shared by every video UNet's ``clone``."""
    for m in core.modules():
        if context is not None and isinstance(getattr(m, "context", None), FrameContext):
            m.context = context
        if isinstance(m, Attention):
            m.set_processor(copy.copy(m.processor))
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(_placed(p, device, dtype), requires_grad=False)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = _placed(b, device, None)


def _placed(t: torch.Tensor, device, dtype) -> torch.Tensor:
    out = t.detach().to(device=device if device is not None else t.device,
                        dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    return usable_alias(out)


def usable_alias(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or, for an inference tensor (made under ``torch.inference_mode``, as ComfyUI loads weights), a
    normal tensor over the *same storage*: autograd may save it for backward, and nothing is copied."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(
            t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def own_parameter(model: nn.Module, name: str, value: torch.Tensor, requires_grad: bool = False) -> None:
    """Make parameter ``name`` (state-dict name) of ``model`` a new ``Parameter`` holding ``value``.

    Only this model sees the change: models that shared the old tensor (the 2D UNet, the model a clone came from)
    keep it. ``value`` should be a fresh tensor (a copy), not a view of a shared one.
    """
    owner_name, _, leaf = name.rpartition(".")
    with torch.inference_mode(False):
        model.get_submodule(owner_name)._parameters[leaf] = nn.Parameter(value, requires_grad=requires_grad)
