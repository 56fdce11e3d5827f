"""What every space-time network of the pack is, whichever base it came from.

:class:`VideoNetwork` is the interface the samplers, tuning loops, file readers and nodes rely on; its two
implementations are :class:`~.inflate.InflatedUNet` (an SD UNet inflated as in Tune-A-Video) and
:class:`~.animatediff.MotionUNet` (an SD UNet with an AnimateDiff motion module). The helpers below build networks
that *share* the 2D weights with the model they came from (:func:`share_clone`, :func:`retarget`) and give single
tensors their own copies when tuning changes them (:func:`own_parameter`).

Which base a network is, is the typed :attr:`VideoNetwork.base` (:class:`NetworkBase`); consumers branch on it, never
on attention names. The names (``attention``, ``temporal``) are what files record.
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from enum import Enum

import torch
from diffusers.models.attention_processor import Attention
from torch import nn


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


class NetworkBase(Enum):
    """Which base a :class:`VideoNetwork` was built on. The value is the name LoRA files record as ``base``."""

    INFLATED = "inflated"  # SD UNet inflated as in Tune-A-Video (:class:`~.inflate.InflatedUNet`)
    ANIMATEDIFF = "animatediff"  # SD UNet + AnimateDiff motion module (:class:`~.animatediff.MotionUNet`)

    @classmethod
    def of_recorded_attention(cls, attention: str) -> NetworkBase:
        """The base a tuned-weights file was made on, from its recorded ``attention``: the AnimateDiff base records
        ``"animatediff"``, an inflated UNet its spatial variant (``tune-a-video``, ``video-p2p``, ...)."""
        return cls.ANIMATEDIFF if attention == cls.ANIMATEDIFF.value else cls.INFLATED


class VideoNetwork(nn.Module, metaclass=ABCMeta):
    """What every video UNet of the pack is, whichever base: the samplers, tuning loops, file readers and nodes use
    only this. ``forward(sample [b,c,f,h,w], timestep, encoder_hidden_states [b,n,d], temporal=True) -> [b,c,f,h,w]``
    (``temporal=False``: frames as independent images, Dreamix).

    It wraps a diffusers UNet (``_core``) whose children are registered as its own (so ``state_dict()`` keys are the
    core's), and exposes its config, dtype, device, training mode and gradient checkpointing. Implementations:
    :class:`~.inflate.InflatedUNet`, :class:`~.animatediff.MotionUNet`.

    Attributes every implementation has (recorded in delta metadata, byte-stable):
        attention: the spatial self-attention variant's name (``"animatediff"`` on the AnimateDiff base).
        attention_options: its options (FFAM: ``{"pool_size": p}``), a dict.
        temporal: the temporal-layer kind (``"tune-a-video"``, ``"ei2-stam"``, ``"animatediff"``).
    """

    attention: str
    attention_options: dict
    temporal: str

    def __init__(self, core: nn.Module):
        super().__init__()
        for name, child in core.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_core", core)  # not a child: its children are ours already

    @property
    @abstractmethod
    def base(self) -> NetworkBase:
        """Which base this network is."""

    @abstractmethod
    def clone(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VideoNetwork:
        """A new network over the same weights (new ``Parameter`` objects; storage shared unless moved/cast)."""

    @abstractmethod
    def with_attention(self, variant: str, options: dict | None = None) -> VideoNetwork:
        """A clone (weights shared) whose spatial self-attention is ``variant`` with ``options``."""

    @abstractmethod
    def with_temporal(self, kind: str) -> VideoNetwork:
        """A clone (weights shared) whose temporal layers are of ``kind``."""

    @abstractmethod
    def temporal_parameters(self) -> dict[str, nn.Parameter]:
        """The temporal layers' tensors (inflation's ``attn_temp``/``norm_temp``, or the motion module), by name."""

    @abstractmethod
    def added_parameters(self) -> dict[str, nn.Parameter]:
        """Tensors a tuned-weights delta carries besides the tuned ones (what the base file does not hold)."""

    @property
    def max_frames(self) -> int | None:
        """The longest clip one forward takes (AnimateDiff: its motion module's positional table); None: any. Longer
        clips run through context windows no longer than this (:mod:`~..sampling.windows`)."""
        return None

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


def retarget(core: nn.Module, device=None, dtype=None) -> None:
    """Give every parameter and buffer of ``core`` (a :func:`share_clone` copy) a new ``Parameter``/tensor, on
    ``device``/``dtype`` where given (storage shared otherwise), and every attention module its own processor
    object. Shared by every video UNet's ``clone``."""
    for m in core.modules():
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
