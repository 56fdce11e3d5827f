"""The ``VIDEO_UNET`` payload: an inflated UNet with everything needed to invert, sample, tune and save it.

Immutable by convention: engine functions and nodes return new :class:`VideoUNet` objects (ComfyUI caches node
outputs and feeds the same object to several consumers).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .defaults import SD_LATENT_SCALE
from .networks.base import VideoNetwork, own_parameter
from .sampling.schedule import NoiseSchedule
from .sampling.windows import ContextWindows, WindowHook, windowed


@dataclass(frozen=True)
class TuneRecord:
    """What one tuning run did (saved as checkpoint metadata)."""

    method: str
    trainable: tuple[str, ...]
    steps: int
    learning_rate: float
    frames: int
    height: int
    width: int
    prompt: str = ""
    seed: int = 0
    final_loss: float = float("nan")


@dataclass(frozen=True)
class VideoUNet:
    """What a ``VIDEO_UNET`` socket carries: a space-time network + noise schedule + latent scale + provenance.

    Attributes:
        network: the space-time network, either base (:class:`~.networks.base.VideoNetwork`; ``[b,c,f,h,w]`` in and
            out).
        schedule: training noise schedule and prediction type of the base model.
        latent_scale: multiply ComfyUI's unscaled ``LATENT`` by this before the UNet sees it.
        base_hash: :func:`~.convert.identity.unet_hash` of the 2D base weights (deltas check it on load).
        base_fingerprint: :func:`~.convert.identity.unet_fingerprint` of them: recognises the same base held at another
            precision when the hashes differ.
        tuned_names: state-dict names of parameters that tuning changed (saved in deltas with the temporal ones).
        history: tuning runs applied so far, oldest first.
    """

    network: VideoNetwork
    schedule: NoiseSchedule
    latent_scale: float = SD_LATENT_SCALE
    base_hash: str = ""
    base_fingerprint: str = ""
    tuned_names: frozenset[str] = frozenset()
    history: tuple[TuneRecord, ...] = field(default_factory=tuple)

    def replace(self, **changes) -> VideoUNet:
        return dataclasses.replace(self, **changes)

    def with_tensors(self, tensors: Mapping[str, torch.Tensor], **changes) -> VideoUNet:
        """A new model whose parameters ``tensors`` (state-dict names) hold copies of the given values, on this
        model's device and dtype; every other tensor stays shared with this model. ``changes``: other fields."""
        unet = self.network.clone()
        params = dict(unet.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise KeyError(f"not parameters of this VIDEO_UNET: {unknown[:3]}")
        for name, value in tensors.items():
            old = params[name]
            own_parameter(unet, name, value.detach().to(old.device, old.dtype, copy=True))
        return self.replace(network=unet, tuned_names=self.tuned_names | frozenset(tensors), **changes)

    def delta_names(self) -> list[str]:
        """Names saved in a delta checkpoint: every tensor the base model lacks (inflation's temporal layers) and every
        tuned tensor that the UNet still has (switching to EI²'s STAM drops ``norm_temp``)."""
        present = set(self.network.state_dict())
        return sorted((set(self.network.added_parameters()) | set(self.tuned_names)) & present)

    def model_fn(self, device: torch.device | str | None = None, autocast_dtype: torch.dtype | None = None,
                 windows: ContextWindows | None = None, on_window: WindowHook | None = None):
        """``fn(x [b,c,f,h,w] fp32, t, context) -> out fp32`` running the UNet in its dtype on ``device``.

        ``windows``: run long clips window by window and fuse (:func:`~.sampling.windows.windowed`; checked against
        the network's :attr:`~.networks.base.VideoNetwork.max_frames`), ``on_window`` before each window. None:
        the whole clip in one call."""
        fn = self._model_fn(device, autocast_dtype)
        return windowed(fn, windows, self.network.max_frames, on_window)

    def _model_fn(self, device, autocast_dtype):
        unet = self.network
        if device is not None and torch.device(device) != unet.device:
            unet = unet.clone(device=device)
        dtype = unet.dtype

        def fn(x, t, context):
            dev = unet.device
            ctx = (torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                return unet(x.to(dev, dtype), t.to(dev), context.to(dev, dtype)).float()

        return fn
