"""Memory estimate of a training run, and the check that refuses a run which cannot fit.

One formula for every training node (OneShotTune, DreamixFinetune, SpatialTemporalLoRATrain), stated as an
*estimate*, in bytes on the training device:

- weights: every parameter of the training clone at its dtype (frozen ones shared in the model's dtype, or fp32
  without autocast), plus an fp32 master copy of each trained tensor (or the fp32 LoRA factors);
- gradients: one fp32 value per trained value;
- optimiser state: AdamW keeps two fp32 moments per value; Adafactor (transformers, ``beta1=None``) keeps a factored
  second moment: for a tensor of shape ``[..., r, c]`` a row ``[..., r]`` and a column ``[..., c]`` vector, 1-D
  tensors in full (Shazeer & Stern 2018, Sec. 3);
- activations: the tensors autograd saves in the forward pass. They grow with the latent pixels of the batch
  (``batch x frames x h/8 x w/8``) times the UNet's width ``sum_i block_out_channels[i] / 4^i`` (level i runs at
  ``1/4^i`` of the pixels); :data:`ACTIVATION_ELEMENTS` is elements saved per pixel per unit of width, measured once
  on CPU with the tiny model by counting saved tensors (``torch.autograd.graph.saved_tensors_hooks``,
  ``tests/test_training_memory.py`` re-measures it), assuming fused (flash / memory-efficient) attention, whose
  memory is linear in the tokens. Unfused attention on long token sequences needs more.

:func:`check_fits` compares the total with the device's free memory (CUDA: ``torch.cuda.mem_get_info``; CPU:
``MemAvailable`` of ``/proc/meminfo``) and refuses when the estimate exceeds :data:`MARGIN` of it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..sampling.windows import ContextWindows
from .clip_windows import step_frames
from .trainable import patterns_for, select_trainable

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adafactor")
#: Saved activation elements per latent pixel per unit of UNet width; without / with gradient checkpointing.
#: Measured on CPU with the tiny model (fp32); see the module docstring.
ACTIVATION_ELEMENTS = {False: 280.0, True: 33.0}
#: The run is refused when the estimate is above this share of the free memory (the rest: allocator slack, the VAE
#: and text encoder ComfyUI may keep, CUDA context).
MARGIN = 0.9
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of a training run's device memory (an estimate; see the module docstring)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    optimizer: str = "adamw"
    trained_values: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def describe(self) -> str:
        g = [x / GIB for x in (self.total, self.weights, self.gradients, self.optimizer_state, self.activations)]
        return (f"estimated training memory {g[0]:.1f} GiB (weights {g[1]:.1f}, gradients {g[2]:.1f}, "
                f"{self.optimizer} state {g[3]:.1f}, activations {g[4]:.1f}; {self.trained_values / 1e6:.1f}M "
                f"trained values)")


def make_optimizer(params: Sequence[torch.nn.Parameter], optimizer: str, lr: float, betas=(0.9, 0.999),
                   weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW, or transformers' Adafactor with a fixed learning rate and no first moment (the memory-lean choice for
    whole-model finetuning: its state is a row and a column per matrix instead of two full copies)."""
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False, beta1=None,
                         weight_decay=weight_decay)
    raise ValueError(f"optimizer={optimizer!r}; expected one of {OPTIMIZERS}")


def optimizer_state_bytes(shapes: Iterable[Sequence[int]], optimizer: str) -> int:
    """fp32 optimiser state of trained tensors of these shapes."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}; expected one of {OPTIMIZERS}")
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        if optimizer == "adamw":
            total += 2 * n
        elif len(shape) >= 2:
            total += math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
        else:
            total += n
    return 4 * total


def activation_bytes(unet_config, pixels: int, checkpointing: bool, element_bytes: int) -> int:
    """Saved activations for ``pixels`` latent pixels (batch x frames x h x w) through a UNet of ``unet_config``."""
    width = sum(c / 4**i for i, c in enumerate(unet_config["block_out_channels"]))
    return int(ACTIVATION_ELEMENTS[bool(checkpointing)] * width * pixels * element_bytes)


def lora_shapes(network: torch.nn.Module, targets: str | Sequence[str], rank: int) -> list[tuple[int, int]]:
    """Shapes of the LoRA factors (``[r, in]``, ``[out, r]``) on the linear layers ``targets`` selects: a regex over
    module paths (peft's ``target_modules``), or parameter names whose ``.weight`` is a linear layer's."""
    shapes, names = [], set(targets)
    for name, module in network.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        hit = (re.fullmatch(targets, name) is not None if isinstance(targets, str)
               else f"{name}.weight" in names)
        if hit:
            shapes += [(rank, module.in_features), (module.out_features, rank)]
    return shapes


def estimate(network: torch.nn.Module, latent_shape: Sequence[int], trained: Sequence[str] = (),
             lora: Sequence[tuple[int, int]] = (), optimizer: str = "adamw", checkpointing: bool = False,
             autocast: torch.dtype | None = None, weight_dtype: torch.dtype | None = None) -> MemoryEstimate:
    """The memory of training ``network`` on latents ``latent_shape`` (``[b,c,f,h,w]``).

    ``trained``: parameter names trained in full (fp32 master copies); ``lora``: shapes of trained LoRA factors
    (:func:`lora_shapes`). ``autocast``: the autocast dtype (None: the clone computes in fp32); ``weight_dtype``: the
    frozen weights' dtype (default: the network's). Works on a network built on the meta device.
    """
    params = dict(network.named_parameters())
    unknown = [n for n in trained if n not in params]
    if unknown:
        raise ValueError(f"trained names not in the network: {unknown[:3]}")
    dtype = torch.float32 if autocast is None else (weight_dtype or network.dtype)
    frozen = sum(p.numel() for n, p in params.items() if n not in set(trained)) * dtype.itemsize
    shapes = [tuple(params[n].shape) for n in trained] + [tuple(s) for s in lora]
    values = sum(math.prod(s) for s in shapes)
    b, _, f, h, w = latent_shape
    act_bytes = (autocast or torch.float32).itemsize
    return MemoryEstimate(weights=frozen + 4 * values, gradients=4 * values,
                          optimizer_state=optimizer_state_bytes(shapes, optimizer),
                          activations=activation_bytes(network.config, b * f * h * w, checkpointing, act_bytes),
                          optimizer=optimizer, trained_values=values)


def autocast_size_dtype(mixed_precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype's *size* class for a run (None: fp32). bf16 and fp16 weigh the same, so which of them
    ``auto`` picks on CUDA does not matter here."""
    if mixed_precision == "fp32" or mixed_precision == "auto" and torch.device(device).type != "cuda":
        return None
    return torch.bfloat16


def tune_estimate(network: torch.nn.Module, latent_shape: Sequence[int], config, device) -> MemoryEstimate:
    """:func:`estimate` for the tuning loop (:func:`~.tune.tune`) with a :class:`~.tune.TuneConfig`; with
    ``config.windows`` the activations are those of one window (each step trains on one)."""
    names = select_trainable(network, patterns_for(network, config.trainable))
    lora = lora_shapes(network, names, config.lora_rank) if config.lora_rank else ()
    c, f, h, w = latent_shape[1:]
    shape = (config.batch_size, c, step_frames(config.windows, f), h, w)
    return estimate(network, shape, () if config.lora_rank else names, lora, config.optimizer,
                    config.gradient_checkpointing, autocast_size_dtype(config.mixed_precision, device))


def lora_train_estimate(network: torch.nn.Module, clip_shapes: Sequence[Sequence[int]], n_spatial: int,
                        temporal: bool, rank: int, checkpointing: bool, mixed_precision: str,
                        device, windows: ContextWindows | None = None) -> MemoryEstimate:
    """:func:`estimate` for MotionDirector's dual-path LoRA training (:func:`~.motion_director.train`): ``n_spatial``
    spatial LoRAs, one temporal LoRA if ``temporal``, AdamW; activations of the longest clip, or of one window of it
    with ``windows``."""
    from . import lora as L

    clip_shapes = [(*s[:2], step_frames(windows, s[2]), *s[3:]) for s in clip_shapes]

    shapes = lora_shapes(network, L.SPATIAL_TARGETS, rank) * n_spatial
    if temporal:
        shapes += lora_shapes(network, L.TEMPORAL_TARGETS[L.base_kind(network)], rank)
    longest = max(clip_shapes, key=lambda s: math.prod(s))
    return estimate(network, longest, (), shapes, "adamw", checkpointing,
                    autocast_size_dtype(mixed_precision, device))


def free_memory(device: torch.device | str) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: ``MemAvailable``), or None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(est: MemoryEstimate, device: torch.device | str, force: bool = False, label: str = "training",
               free: int | None = None) -> str:
    """Log the estimate and return it as one line; raise MemoryError when it exceeds :data:`MARGIN` of the free
    memory (``free``: bytes, default :func:`free_memory`) unless ``force``."""
    free = free_memory(device) if free is None else free
    line = est.describe()
    if free is not None:
        line += f"; {free / GIB:.1f} GiB free on {torch.device(device).type}"
    logger.info("%s: %s", label, line)
    if free is not None and est.total > MARGIN * free and not force:
        raise MemoryError(
            f"{label}: {line}: it does not fit (limit {MARGIN:.0%} of free memory). Try: a smaller trainable preset "
            f"(e.g. dreamix-lora / dreamix-attention), gradient_checkpointing on, mixed precision, the adafactor "
            f"optimizer, fewer frames or a smaller size, or close other programs; set force_memory to start anyway.")
    if free is not None and est.total > MARGIN * free:
        logger.warning("%s: the estimate exceeds the free memory; starting anyway (force_memory)", label)
    return line
