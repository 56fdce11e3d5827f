"""The shared tuning loop: finetune chosen tensors of a video UNet on one clip with the denoising loss.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.2 "One-shot tuning", is the loop's origin: the standard denoising loss
``|| eps - eps_theta(x_t, t, c) ||^2`` on the source clip's latents and prompt, updating only the chosen tensors.
Everything else stays frozen and shared with the input model. ``lora_rank > 0`` trains LoRA adapters on the chosen
linear layers instead and merges them at the end.

The loop knows no method: its caller names the trainable patterns (``TuneConfig.trainable``) and may give a per-step
batch policy (:data:`BatchPolicy`) that picks, each step, the video batch or another batch built from it, with the
temporal layers on or bypassed. Methods live in ``modules/methods`` and call :func:`tune` (Tune-A-Video:
:func:`~..methods.tune_a_video.tune_a_video`; Dreamix's mixed video/frame batches:
:func:`~..methods.dreamix.dreamix_finetune`).

The clip is encoded once and the loss uses that latent (the VAE posterior mean, which is also what ComfyUI's VAE
Encode returns); the reference draws a new posterior sample every step.

:func:`tune` is a pure function of its inputs: it returns a new :class:`~..video_unet.VideoUNet` and the loss curve;
the input model is never modified, also when the loop is interrupted (the callback raises).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..defaults import TAV
from ..finite import FiniteWatch
from ..networks.base import own_parameter
from ..networks.inflate import InflatedUNet
from ..sampling.anchor import FrameAnchor, anchor_scope
from ..sampling.schedule import NoiseSchedule
from ..sampling.windows import ContextWindows
from ..video_unet import TuneRecord, VideoUNet
from .clip_windows import check_clip_fits, windowed_batches
from .lora import add_lora, merged_weights
from .memory import OPTIMIZERS, make_optimizer
from .trainable import patterns_for, select_trainable

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of :func:`tune`; defaults from Tune-A-Video (see :class:`~..defaults.TuneAVideoDefaults`)."""

    steps: int = TAV.max_train_steps
    learning_rate: float = TAV.learning_rate
    batch_size: int = TAV.train_batch_size
    trainable: tuple[str, ...] = TAV.trainable_modules
    seed: int = TAV.seed
    gradient_checkpointing: bool = TAV.gradient_checkpointing
    mixed_precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 if no bf16), fp32 on CPU; bf16/fp16: anywhere
    adam_betas: tuple[float, float] = (TAV.adam_beta1, TAV.adam_beta2)
    weight_decay: float = TAV.adam_weight_decay
    adam_epsilon: float = TAV.adam_epsilon
    max_grad_norm: float = TAV.max_grad_norm
    method: str = "tune-a-video"  # recorded in the result's history (and saved files' metadata)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on the trainable linear layers, merged at the end
    optimizer: str = "adamw"  # or "adafactor" (transformers; factored state, see .memory)
    #: None: every step trains on the whole clip; else each step on one window of it (:mod:`.clip_windows`)
    windows: ContextWindows | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; expected one of {PRECISIONS}")
        if not self.trainable:
            raise ValueError("trainable is empty: name at least one module pattern (e.g. 'attn_temp')")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; expected one of {OPTIMIZERS}")
        if self.windows is not None and not isinstance(self.windows, ContextWindows):
            raise ValueError(f"context must be a VIDEO_CONTEXT (ContextWindows), got {type(self.windows).__name__}")


@dataclass(frozen=True)
class StepBatch:
    """What one tuning step trains on: ``latents [b,c,f,h,w]`` (scaled), ``context [b,n,d]``; ``temporal=False``
    bypasses the temporal layers; ``info`` is added to the callback's info for that step. ``anchor_latents``: the
    clip's first window when this step's window does not hold frame 0: its frame 0 is the anchor the window's
    sparse-causal / first-frame attention reads, as when sampling with the same windows (:mod:`~..sampling.anchor`)."""

    latents: torch.Tensor
    context: torch.Tensor
    temporal: bool = True
    info: Mapping[str, object] = field(default_factory=dict)
    anchor_latents: torch.Tensor | None = None


#: ``policy(step, video, context) -> StepBatch``: called once per step (``step`` from 0) with the clip as the training
#: batch (``[batch_size,c,f,h,w]`` and ``[batch_size,n,d]``, on the training device, fp32).
BatchPolicy = Callable[[int, torch.Tensor, torch.Tensor], StepBatch]


def video_batches(step: int, video: torch.Tensor, context: torch.Tensor) -> StepBatch:
    """The default policy: every step trains on the clip as a video, temporal layers on."""
    return StepBatch(video, context)


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32. ``auto``: bf16 on CUDA (fp16 without bf16), fp32 elsewhere; an explicit
    ``bf16``/``fp16`` autocasts on any device (CPU autocast included, so CPU-only CI exercises the mixed path)."""
    if requested == "fp32" or requested == "auto" and device.type != "cuda":
        return None
    if requested == "fp16":
        return torch.float16
    if requested == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(requested: str, amp: torch.dtype | None) -> str:
    """``mixed_precision`` as requested and as resolved, for messages (``auto -> bf16``)."""
    resolved = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[amp]
    return resolved if requested == resolved else f"{requested} -> {resolved}"


def denoising_loss(unet: InflatedUNet, schedule: NoiseSchedule, x0: torch.Tensor, context: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                   temporal: bool = True) -> torch.Tensor:
    """Mean squared error between the model output and its target (``eps`` or ``v``) at timesteps ``t`` ``[b]``.

    ``x0``: ``[b,c,f,h,w]`` scaled latents; ``context``: ``[b,n,d]``; ``noise`` like ``x0``. ``temporal=False``
    bypasses the temporal layers (for frames passed as the batch, ``f = 1``: each frame is then an independent
    image).
    """
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.training_target(x0, noise, t)
    dev = x0.device
    ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        kw = {} if temporal else {"temporal": False}  # bases without the switch still train on videos
        pred = unet(x_t.to(unet.dtype), t, context.to(unet.dtype), **kw)
    return F.mse_loss(pred.float(), target.float())


def record_anchor(unet, schedule: NoiseSchedule, first: torch.Tensor, context: torch.Tensor, t: torch.Tensor,
                  noise: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> FrameAnchor:
    """Frame 0's keys/values per self-attention layer from a no-gradient pass over the clip's first window, noised
    to the step's timesteps ``t`` (what windowed sampling records from the window holding frame 0)."""
    anchor = FrameAnchor()
    x_t = schedule.add_noise(first, noise, t)
    ctx = torch.autocast(first.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.no_grad(), ctx, anchor_scope(anchor):
        unet(x_t.to(unet.dtype), t, context.to(unet.dtype))
    anchor.recording = False
    return anchor


def prepare_unet(model: VideoUNet, names: list[str], device: torch.device, amp: torch.dtype | None,
                  lora_rank: int = 0) -> tuple[InflatedUNet, list[torch.nn.Parameter]]:
    """A clone to train and its trainable parameters (the named ones, or LoRA adapters over them)."""
    # Without autocast the UNet must compute in fp32 (CPU half precision is slow and inaccurate): copy if needed.
    dtype = torch.float32 if amp is None else None
    unet = model.network.clone(device=device, dtype=dtype)
    if lora_rank:
        return unet, add_lora(unet, names, lora_rank)
    params = dict(unet.named_parameters())
    for name in names:  # trainable tensors get their own fp32 master copy: the input model keeps its values
        own_parameter(unet, name, params[name].detach().float().clone(), requires_grad=True)
    params = dict(unet.named_parameters())
    return unet, [params[n] for n in names]


def tune(model: VideoUNet, latents: torch.Tensor, context: torch.Tensor, config: TuneConfig = TuneConfig(),
         device: torch.device | str | None = None, callback: Callable[[int, int, dict], None] | None = None,
         prompt: str = "", batches: BatchPolicy = video_batches) -> tuple[VideoUNet, list[float]]:
    """Tune ``model`` on one clip. Returns ``(tuned model, loss per step)``.

    Args:
        latents: ``[1, c, f, h, w]`` scaled source latents (computed once, reused every step).
        context: ``[1, n, d]`` source-prompt embeddings (computed once).
        callback: ``callback(step, total, {"loss": tensor, "temporal": bool, **batch.info})`` after each step;
            raise from it to interrupt.
        batches: the per-step batch policy (default: the clip as a video every step). With ``config.windows`` it
            sees one window of the clip per step instead (:func:`~.clip_windows.windowed_batches`; the record
            keeps the clip's frame count, which inversion and sampling of that clip check).
    Runs correctly under ComfyUI's ``torch.inference_mode()`` executor: it leaves inference mode and copies the
    inputs it trains on.
    """
    if latents.dim() != 5 or latents.shape[0] != 1:
        raise ValueError(f"latents must be one clip [1, c, f, h, w], got shape {tuple(latents.shape)}")
    if context.dim() != 3 or context.shape[0] != 1:
        raise ValueError(f"context must be [1, n, d] text embeddings, got shape {tuple(context.shape)}")
    check_clip_fits(model.network, config.windows, latents.shape[2])
    if config.windows is not None:
        batches = windowed_batches(config.windows, latents.shape[2], config.steps, config.seed, batches)
    device = torch.device(device) if device is not None else model.network.device
    amp = autocast_dtype(config.mixed_precision, device)
    with torch.inference_mode(False), torch.enable_grad():
        names = select_trainable(model.network, patterns_for(model.network, config.trainable))
        unet, params = prepare_unet(model, names, device, amp, config.lora_rank)
        losses = _train_loop(unet, model.schedule, latents, context, params, config, device, amp, callback, batches)
        if config.lora_rank:
            trained = merged_weights(unet)
        else:
            by_name = dict(unet.named_parameters())
            trained = {name: by_name[name].detach() for name in names}
    curve = losses.cpu().tolist()
    _, _, f, h, w = latents.shape
    record = TuneRecord(method=config.method, trainable=tuple(config.trainable), steps=config.steps,
                        learning_rate=config.learning_rate, frames=f, height=h * 8, width=w * 8, prompt=prompt,
                        seed=config.seed, final_loss=float(sum(curve[-10:]) / len(curve[-10:])))
    # The result lives where the input lives and shares every frozen tensor with it (no second UNet in memory);
    # only the trained tensors are new, cast to the input's dtype.
    return model.with_tensors(trained, history=model.history + (record,)), curve


def _train_loop(unet, schedule, latents, context, params, config, device, amp, callback, batches) -> torch.Tensor:
    logger.info("tuning %d tensors (%.2fM values), %d steps", len(params), sum(p.numel() for p in params) / 1e6,
                config.steps)
    x0 = latents.detach().to(device=device, dtype=torch.float32).clone()
    ctx = context.detach().to(device=device, dtype=torch.float32).clone()
    x0 = x0.expand(config.batch_size, -1, -1, -1, -1)
    ctx = ctx.expand(config.batch_size, -1, -1)
    opt = make_optimizer(params, config.optimizer, config.learning_rate, config.adam_betas, config.weight_decay,
                         config.adam_epsilon)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    losses = torch.zeros(config.steps, device=device)
    watch = FiniteWatch(config.steps, params, precision_name(config.mixed_precision, amp), config.method, device)
    for step in range(config.steps):
        batch = batches(step, x0, ctx)
        xs = batch.latents
        noise = torch.randn(xs.shape, generator=gen, device=device)
        t = torch.randint(0, schedule.num_train_timesteps, (xs.shape[0],), generator=gen, device=device)
        anchor = None
        if batch.anchor_latents is not None:
            first = batch.anchor_latents
            anchor = record_anchor(unet, schedule, first, batch.context, t,
                                   torch.randn(first.shape, generator=gen, device=device), amp)
        with anchor_scope(anchor):  # checkpointed blocks keep it: it reaches them as an argument
            loss = denoising_loss(unet, schedule, xs, batch.context, t, noise, amp, temporal=batch.temporal)
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:  # a batch with temporal layers bypassed gives none when only they train
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(opt)
            scaler.update()
        losses[step] = loss.detach()
        watch.loss(step + 1, losses[step])
        watch.check(step + 1)
        if callback is not None:
            callback(step + 1, config.steps, {"loss": losses[step], "temporal": batch.temporal, **batch.info})
    return losses
