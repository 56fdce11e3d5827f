"""MotionDirector: dual-path LoRA motion customisation (Zhao et al., 2023, "MotionDirector: Motion Customization of
Text-to-Video Diffusion Models", Sec. 4 and Fig. 3), on any video UNet of the pack (AnimateDiff or inflated SD).

Every step, as the reference ``MotionDirector_train.py`` does it (line numbers of showlab/MotionDirector @0146a50):

- one clip of the training set, in order (batch 1, ``shuffle=False``, ``:677-681``), one timestep ``t ~ U[0, T)`` and
  one noise draw shared by both paths (``:786-791``);
- **spatial path**, skipped with probability 0.2 (``:907``): a random frame (``:839``) of the noised clip runs
  through the model as a one-frame video with the temporal LoRA off (``:834-837``) and this clip's own spatial LoRA
  on; plain denoising loss (``:857-858``); only that spatial LoRA steps (``:922-927``);
- **temporal path**: the whole clip with the temporal LoRA on and the clip's spatial LoRA on, or off on the steps
  where the spatial path was skipped (``:816-820``); the spatial LoRA is used but never updated (here it gets no
  gradient at all; the reference computes one and discards it); loss = plain loss + the appearance-debiased loss
  (:func:`debiased_loss`, ``:870-878``); only the temporal LoRA steps (``:929-931``).
- One spatial LoRA per training clip (``single_spatial_lora`` False, ``:633-638``), one shared temporal LoRA; AdamW for
  each, constant learning rate.

:func:`train` returns the LoRAs and the VIDEO_UNET they make: the temporal LoRA at strength 1 and the first clip's
spatial LoRA at ``output_spatial_strength`` baked into the input model, with its :class:`~..video_unet.TuneRecord`.
:func:`noise_prior` is the inference side (``MotionDirector_inference.py``): inverted noise mixed with fresh noise.

Differences, on purpose: peft's LoRA dropout acts on the LoRA input, the reference's on its output; the reference
trains in fp16 autocast, here the precision is an input (fp32 on CPU, bf16 autocast on CUDA by default); clips are
encoded once (the reference caches latents too, ``cache_latents: True``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..finite import FiniteWatch
from ..sampling.windows import ContextWindows
from ..training import lora as L
from ..training.clip_windows import check_clip_fits, step_frames, take_frames, window_schedule
from ..training.tune import autocast_dtype, precision_name
from ..video_unet import TuneRecord, VideoUNet

logger = logging.getLogger(__name__)

TEMPORAL = "temporal"
#: Which paths train: both (MotionDirector), spatial only (a subject or an image's appearance, e.g. to animate one
#: image with a temporal LoRA learnt elsewhere, Sec. 5 "animating images"), temporal only (no appearance LoRA).
PATHS = ("spatial+temporal", "spatial", "temporal")


@dataclass(frozen=True)
class MotionDirectorConfig:
    """Hyper-parameters; defaults from showlab/MotionDirector ``configs/config_single_video.yaml``."""

    steps: int = 150  # max_train_steps (config_multi_videos.yaml: 3000)
    rank: int = 32  # lora_rank
    dropout: float = 0.1  # lora_unet_dropout
    lr_spatial: float = 5e-4  # learning_rate (both paths)
    lr_temporal: float = 5e-4
    #: adam_weight_decay; None: the reference config's value for the number of clips (:meth:`weight_decay_for`)
    weight_decay: float | None = None
    spatial_skip_prob: float = 0.2  # MotionDirector_train.py:907, mask_spatial_lora
    debias_beta: float = 1.0  # MotionDirector_train.py:871, beta; alpha = sqrt(beta^2 + 1)
    seed: int = 0
    gradient_checkpointing: bool = True  # gradient_checkpointing
    mixed_precision: str = "auto"
    max_grad_norm: float = 1.0  # max_grad_norm (train script default)
    paths: str = "spatial+temporal"
    #: strength of the first clip's spatial LoRA in the returned VIDEO_UNET; 0: motion only (MotionDirector's
    #: inference for new subjects)
    output_spatial_strength: float = 1.0
    #: None: every step trains on a whole clip; else on one window of it, in a seeded shuffled cycle per clip
    #: (:mod:`~..training.clip_windows`; peak memory is a window's)
    windows: ContextWindows | None = None

    def weight_decay_for(self, videos: int) -> float:
        """``weight_decay``, or 1e-2 for one video (config_single_video.yaml) and 1e-4 for several
        (config_multi_videos.yaml)."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 1e-2 if videos == 1 else 1e-4

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.rank < 1:
            raise ValueError(f"rank={self.rank} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if not (self.lr_spatial > 0 and self.lr_temporal > 0):
            raise ValueError(f"learning rates must be > 0, got spatial {self.lr_spatial}, temporal {self.lr_temporal}")
        if self.paths not in PATHS:
            raise ValueError(f"paths={self.paths!r}; expected one of {PATHS}")
        if not 0 <= self.spatial_skip_prob <= 1:
            raise ValueError(f"spatial_skip_prob={self.spatial_skip_prob} must be in [0, 1]")
        if self.windows is not None and not isinstance(self.windows, ContextWindows):
            raise ValueError(f"context must be a VIDEO_CONTEXT (ContextWindows), got {type(self.windows).__name__}")


#: Weight p of the inverted noise in :func:`noise_prior` (MotionDirector configs: 0.5 for one video, 0 for several;
#: its README also uses 0.3).
NOISE_PRIOR = 0.5


@dataclass(frozen=True)
class MotionDirectorResult:
    """The trained LoRAs (``temporal`` None / ``spatial`` empty for a path not trained), their loss curves (NaN on
    steps a path did not run), and ``video_unet``: the input with the LoRAs baked in (the temporal one at strength 1,
    the first spatial one at ``output_spatial_strength``) and ``record`` appended to its history."""

    temporal: L.LoRAWeights | None
    spatial: tuple[L.LoRAWeights, ...]
    spatial_losses: list[float]
    temporal_losses: list[float]
    video_unet: VideoUNet
    record: TuneRecord


def debiased_loss(pred: torch.Tensor, target: torch.Tensor, anchor: int, beta: float = 1.0) -> torch.Tensor:
    """Appearance-debiased temporal loss (MotionDirector Sec. 4.2, Eq. 4; ``MotionDirector_train.py:870-876``):
    ``MSE(alpha * pred - beta * pred[anchor], alpha * target - beta * target[anchor])``, ``alpha = sqrt(beta^2 + 1)``;
    the anchor frame is broadcast over every frame. ``pred``/``target``: ``[b, c, f, h, w]``."""
    alpha = (beta ** 2 + 1) ** 0.5
    a = slice(anchor, anchor + 1)
    return F.mse_loss(alpha * pred - beta * pred[:, :, a], alpha * target - beta * target[:, :, a])


def train(model: VideoUNet, clips: Sequence[torch.Tensor], contexts: Sequence[torch.Tensor],
          config: MotionDirectorConfig = MotionDirectorConfig(), device: torch.device | str | None = None,
          callback: Callable[[int, int, dict], None] | None = None, prompt: str = "") -> MotionDirectorResult:
    """Train one temporal LoRA and one spatial LoRA per clip on ``model`` (left untouched).

    Args:
        clips: scaled latents ``[1, c, f, h, w]`` per training video (frame counts may differ between clips).
        contexts: prompt embeddings ``[1, n, d]`` per clip.
        callback: ``callback(step, total, {"loss": temporal loss})`` after each step; raise from it to interrupt.
        prompt: the prompt text for the LoRA files' metadata and the record; per-video prompts separated by '|'.
    """
    if not clips or len(clips) != len(contexts):
        raise ValueError(f"need one prompt per clip: {len(clips)} clips, {len(contexts)} prompts")
    min_frames = 1 if config.paths == "spatial" else 2
    for i, x in enumerate(clips):
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[2] < min_frames:
            raise ValueError(f"clip {i}: latents must be [1, c, f>={min_frames}, h, w] (the temporal path needs "
                             f"motion: at least 2 frames), got {tuple(x.shape)}")
        check_clip_fits(model.network, config.windows, x.shape[2], clip_name=f"latent (clip {i})")
        if step_frames(config.windows, x.shape[2]) < min_frames:
            raise ValueError(f"context: context_length={config.windows.length} leaves one frame per window; the "
                             f"temporal path needs motion: at least 2 frames")
    device = torch.device(device) if device is not None else model.network.device
    amp = autocast_dtype(config.mixed_precision, device)
    spatial_names = [f"spatial_{i}" for i in range(len(clips))] if config.paths != "temporal" else []
    temporal_on = config.paths != "spatial"
    # LoRA init and dropout draw from the global RNG: seeded inside a fork, so runs repeat and callers' RNG is kept
    forked = [device] if device.type == "cuda" else []
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        unet = model.network.clone(device=device, dtype=torch.float32 if amp is None else None)
        kind = L.base_kind(unet)
        for name in spatial_names:
            L.add_adapter(unet, name, L.SPATIAL_TARGETS, config.rank, config.dropout)
        if temporal_on:
            L.add_adapter(unet, TEMPORAL, L.TEMPORAL_TARGETS[kind], config.rank, config.dropout)
        curves = _loop(unet, model, clips, contexts, spatial_names, config, device, amp, callback)
        meta = lora_metadata(model, clips, prompt, config)
        temporal = L.extract(unet, TEMPORAL, "temporal", meta) if temporal_on else None
        spatial = tuple(L.extract(unet, n, "spatial", {**meta, "video_index": str(i)})
                        for i, n in enumerate(spatial_names))
    entry = record(config, clips, [prompt], curves[1] if temporal_on else curves[0])
    merged = L.merge_all(model, [(temporal, 1.0, "temporal LoRA"),
                                 (spatial[0] if spatial else None, config.output_spatial_strength, "spatial LoRA")])
    merged = merged.replace(history=merged.history + (entry,))
    return MotionDirectorResult(temporal, spatial, *curves, merged, entry)


def _split_prompt(prompt: str, videos: int) -> list[str]:
    parts = [p.strip() for p in prompt.split("|")]
    return parts if len(parts) == videos else [prompt] * videos


def lora_metadata(model: VideoUNet, clips: Sequence[torch.Tensor], prompt: str,
                  config: MotionDirectorConfig) -> dict[str, str]:
    """What the LoRA files record: method, base model (and motion module), clip geometry, prompts, steps, seed."""
    _, _, f, h, w = clips[0].shape
    return {"method": "motion-director", **L.provenance(model), "frames": str(f), "videos": str(len(clips)),
            "height": str(h * 8), "width": str(w * 8),
            "prompts": L.metadata_json(_split_prompt(prompt, len(clips))), "steps": str(config.steps),
            "seed": str(config.seed), "paths": config.paths}


def noise_prior(inverted: torch.Tensor, prior: float = NOISE_PRIOR,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """MotionDirector's noise prior (``MotionDirector_inference.py``): ``sqrt(p) z_inv + sqrt(1 - p) eps``, variance
    preserving; ``eps`` fresh noise of ``inverted``'s shape drawn on the CPU from ``generator``. 0: fresh noise only,
    1: the inverted noise (Tune-A-Video style). ``inverted``: any shape, e.g. ``[1, c, f, h, w]``."""
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"noise_prior={prior} must be in [0, 1]")
    fresh = torch.randn(inverted.shape, generator=generator)
    return prior ** 0.5 * inverted + (1 - prior) ** 0.5 * fresh.to(inverted.device)


def _optimizer(params, lr, config, videos):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay_for(videos),
                             eps=1e-8)


def _forward(unet, x, t, ctx, amp):
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        return unet(x.to(unet.dtype), t, ctx.to(unet.dtype)).float()


def _step(loss, params, opt, config):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    opt.step()


def _loop(unet, model, clips, contexts, spatial_names, config, device, amp, callback):
    schedule = model.schedule
    temporal_on = config.paths != "spatial"
    temporal_params = L.adapter_parameters(unet, TEMPORAL) if temporal_on else []
    spatial_params = [L.adapter_parameters(unet, n) for n in spatial_names]
    opt_t = _optimizer(temporal_params, config.lr_temporal, config, len(clips)) if temporal_on else None
    opt_s = [_optimizer(p, config.lr_spatial, config, len(clips)) for p in spatial_params]
    x0s = [x.detach().to(device, torch.float32).clone() for x in clips]
    spans = [config.windows.spans(x.shape[2]) if config.windows else [list(range(x.shape[2]))] for x in x0s]
    orders = [window_schedule(len(s), config.steps, config.seed + i) for i, s in enumerate(spans)]
    ctxs = [c.detach().to(device, torch.float32).clone() for c in contexts]
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    spatial_curve = torch.full((config.steps,), float("nan"), device=device)
    temporal_curve = torch.full((config.steps,), float("nan"), device=device)
    watch = FiniteWatch(config.steps, temporal_params + [p for ps in spatial_params for p in ps],
                        precision_name(config.mixed_precision, amp), "MotionDirector", device)
    for step in range(config.steps):
        i = step % len(clips)
        span = spans[i][orders[i][step // len(clips)]]
        x0, ctx = take_frames(x0s[i], span), ctxs[i]  # the whole clip itself without windows
        spatial = spatial_names[i] if spatial_names else None
        f = x0.shape[2]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, schedule.num_train_timesteps, (1,), generator=gen).to(device)
        skip_draw = bool(torch.rand((), generator=gen) < config.spatial_skip_prob)  # drawn in every mode alike
        skip_spatial = spatial is None or (temporal_on and skip_draw)
        frame = int(torch.randint(0, f, (), generator=gen))
        anchor = int(torch.randint(0, f, (), generator=gen))
        x_t = schedule.add_noise(x0, noise, t)
        target = schedule.training_target(x0, noise, t)
        if not skip_spatial:
            L.activate(unet, [spatial], training=[spatial])
            pred = _forward(unet, x_t[:, :, frame:frame + 1], t, ctx, amp)
            loss_s = F.mse_loss(pred, target[:, :, frame:frame + 1])
            _step(loss_s, spatial_params[i], opt_s[i], config)
            spatial_curve[step] = loss_s.detach()
            watch.loss(step + 1, spatial_curve[step])
        if temporal_on:
            L.activate(unet, [TEMPORAL] if skip_spatial else [spatial, TEMPORAL], training=[TEMPORAL])
            pred = _forward(unet, x_t, t, ctx, amp)
            loss_t = F.mse_loss(pred, target) + debiased_loss(pred, target, anchor, config.debias_beta)
            _step(loss_t, temporal_params, opt_t, config)
            temporal_curve[step] = loss_t.detach()
            watch.loss(step + 1, temporal_curve[step])
        watch.check(step + 1)
        if callback is not None:
            callback(step + 1, config.steps, {"loss": temporal_curve[step] if temporal_on else spatial_curve[step]})
    return spatial_curve.cpu().tolist(), temporal_curve.cpu().tolist()


def record(config: MotionDirectorConfig, clips, prompts: Sequence[str], losses: Sequence[float]) -> TuneRecord:
    """Provenance entry for the returned VIDEO_UNET's history (saved with deltas)."""
    _, _, f, h, w = clips[0].shape
    tail = [v for v in losses[-10:] if v == v] or [float("nan")]
    return TuneRecord(method="motion-director", trainable=("spatial-lora", "temporal-lora"), steps=config.steps,
                      learning_rate=config.lr_temporal, frames=f, height=h * 8, width=w * 8,
                      prompt=" | ".join(prompts), seed=config.seed, final_loss=float(sum(tail) / len(tail)))
