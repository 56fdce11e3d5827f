"""Dreamix: mixed video-image finetuning, inference from a corrupted video, image-to-video by camera motion.

Dreamix (Molad et al., "Dreamix: Video Diffusion Models are General Video Editors", arXiv 2302.01329):

- Sec. 3.2 / Fig. 3, *mixed video-image finetuning*: the video model is finetuned on the clip as a video (temporal
  layers on) and on its frames as an unordered set of independent images (temporal attention masked), so that it
  keeps the clip's appearance without locking onto its motion. Here: each tuning step is a video batch or a frame
  batch, drawn with probability ``image_ratio`` from a seeded generator (:func:`mix_schedule`); a frame batch puts
  the frames in the batch dimension (``f = 1``) and bypasses every temporal layer (:func:`as_image_batch`,
  ``InflatedUNet.forward(..., temporal=False)``), so temporal weights get no gradient and AdamW leaves them untouched.
  The loop is the pack's one tuning loop (:func:`~.tune.tune` with ``TuneConfig.image_ratio``).
- Sec. 3.1, *inference from a degraded video*: the source is downsampled in space (and time), brought back to the
  working size, encoded, noised to noise scale ``s`` and denoised with the finetuned model from there
  (:func:`corrupt_frames`, :func:`corrupted_sample`, one DDIM loop: :func:`~.ddim.sample` with ``start_step``).
- Sec. 4.2 (image animation): one image becomes a coarse video by replication + simple camera motion (zoom, pan,
  perspective; :func:`image_to_coarse_video`), then the same finetune + corrupted inference. Sec. 4.3
  (subject-driven generation): a few images of a subject are finetuned as frames only (``image_ratio = 1``), then a
  video is sampled from noise.

The paper runs on Imagen-Video; we run on both video bases of the pack, the inflated SD UNet and the AnimateDiff UNet
(:class:`~.animatediff.MotionUNet`). A base works here if its forward is ``forward(sample [b,c,f,h,w], timestep,
context [b,n,d], temporal: bool = True)`` where ``temporal=False`` skips every temporal/motion module (so that with
``f = 1`` it is the image model), and if it has ``clone()``, ``temporal_parameters()`` and ``named_parameters()``.
Presets naming the inflated UNet's ``attn_temp`` select the motion modules' attentions on AnimateDiff
(:func:`trainable_for`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ..networks.base import NetworkBase
from ..sampling.ddim import Callback, Cond, sample
from ..sampling.schedule import NoiseSchedule

CAMERA_MOTIONS = ("zoom-in", "zoom-out", "pan-left", "pan-right", "pan-up", "pan-down", "perspective", "none")

#: Trainable presets. Sec. 3.2 finetunes the whole video model; the cheaper presets are ours: every attention
#: projection (spatial, cross and temporal), or LoRA on those projections (rank: TuneConfig.lora_rank).
ATTENTION_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                         "attn2.to_v", "attn2.to_out.0", "attn_temp.to_q", "attn_temp.to_k", "attn_temp.to_v",
                         "attn_temp.to_out.0")
DREAMIX_PRESETS = {"dreamix-full": ("*",), "dreamix-attention": ATTENTION_PROJECTIONS,
                   "dreamix-lora": ATTENTION_PROJECTIONS}


def trainable_for(unet, patterns: Sequence[str]) -> tuple[str, ...]:
    """Presets name the inflated UNet's temporal layer (``attn_temp``); an AnimateDiff UNet has none: there its
    temporal attentions are the motion modules' ``attn1``/``attn2``, which the same presets' ``attn1.*``/``attn2.*``
    suffixes already select, so the ``attn_temp`` patterns are dropped."""
    if unet.base is not NetworkBase.ANIMATEDIFF:
        return tuple(patterns)
    kept = tuple(p for p in patterns if "attn_temp" not in p)
    if not kept:
        raise ValueError("trainable names only attn_temp, which an AnimateDiff VIDEO_UNET does not have; use "
                         "'motion_modules' for its temporal layers")
    return kept


def check_unit(value: float, name: str) -> float:
    """``value`` as a float in [0, 1], or ValueError naming ``name``."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0 or math.isnan(value):
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
    return float(value)


def mix_schedule(steps: int, image_ratio: float, seed: int) -> torch.Tensor:
    """``[steps]`` bool, True where the step is a frame batch. Each step is one with probability ``image_ratio``,
    drawn from a CPU generator seeded with ``seed`` (independent of the training noise's generator)."""
    check_unit(image_ratio, "image_ratio")
    gen = torch.Generator().manual_seed(int(seed) ^ 0x5EED)
    return torch.rand(steps, generator=gen) < image_ratio


def as_image_batch(x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as independent images: ``x [b,c,f,h,w] -> [(b f),c,1,h,w]``, ``context [b,n,d] -> [(b f),n,d]``."""
    f = x.shape[2]
    return (rearrange(x, "b c f h w -> (b f) c 1 h w"),
            repeat(context, "b n d -> (b f) n d", f=f))


def _check_factor(value, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def corrupt_frames(frames: torch.Tensor, spatial: int = 4, temporal: int = 1) -> torch.Tensor:
    """Dreamix Sec. 3.1 degradation: ``[F,H,W,3]`` in 0..1 -> same shape, keeping only coarse information.

    Spatial: area-downsample by ``spatial`` (to ``ceil(H/s) x ceil(W/s)``), bilinear back to ``H x W``. Temporal: keep
    every ``temporal``-th frame and hold it (nearest-frame upsampling back to ``F`` frames).
    """
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames must be an IMAGE batch [F, H, W, 3], got shape {tuple(frames.shape)}")
    s, k = _check_factor(spatial, "spatial_downsample"), _check_factor(temporal, "temporal_downsample")
    f, h, w, _ = frames.shape
    x = frames.float().permute(0, 3, 1, 2)
    if s > 1:
        small = F.interpolate(x, size=(-(-h // s), -(-w // s)), mode="area")
        x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    if k > 1:
        x = x[(torch.arange(f) // k) * k]
    return x.permute(0, 2, 3, 1).contiguous()


def start_of(schedule: NoiseSchedule, steps: int, strength: float) -> tuple[int, int]:
    """``(start_step, timestep)``: DDIM index and timestep from which ``strength`` (noise scale s) denoises.

    ``round(strength * steps)`` of the ``steps``-step DDIM grid are run; strength 1 starts at the grid's first
    (noisiest) timestep, strength 0 runs none (timestep -1: the clean latent)."""
    check_unit(strength, "noise_strength")
    n = round(strength * steps)
    if n == 0:
        return steps, -1
    ts = schedule.ddim_timesteps(steps)
    return steps - n, int(ts[steps - n])


@torch.no_grad()
def corrupted_sample(model, schedule: NoiseSchedule, x0: torch.Tensor, cond: Cond, uncond: Cond | None,
                     strength: float, steps: int = 50, cfg: float = 7.5, generator: torch.Generator | None = None,
                     callback: Callback | None = None) -> tuple[torch.Tensor, int]:
    """Noise the encoded degraded video ``x0`` (``[b,c,f,h,w]`` scaled) to noise scale ``strength`` and DDIM-denoise it
    with ``model``. Returns ``(clean latents, start timestep)`` (timestep -1: nothing was done, ``x0`` returned).

    ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (Dreamix Sec. 3.1's ``x_s`` in the discrete schedule); at strength 1 the
    start is pure noise ``eps``, as in text-to-video sampling (the grid's first timestep, 901 for 10 steps, would
    otherwise keep ``sqrt(a_t) ~ 0.15`` of the source)."""
    start, t0 = start_of(schedule, steps, strength)
    if t0 < 0:
        return x0.float().clone(), t0
    noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else "cpu")
    if start == 0:  # s = 1: pure noise, as text-to-video sampling starts (Sec. 3.1: nothing of the source is kept)
        x_t = noise.to(x0.device)
    else:
        x_t = schedule.add_noise(x0.float(), noise.to(x0.device), torch.tensor([t0], device=x0.device))
    out = sample(model, schedule, x_t, cond, uncond, steps=steps, cfg=cfg, start_step=start, callback=callback)
    return out, t0


def stack_images(images: Sequence[torch.Tensor] | torch.Tensor, name: str = "images") -> torch.Tensor:
    """A list of ``[H,W,3]`` / ``[n,H,W,3]`` images of one size -> ``[N,H,W,3]``; mixed sizes -> ValueError naming
    ``name`` and the sizes found."""
    if torch.is_tensor(images):
        images = [images]
    parts = [im if im.dim() == 4 else im[None] for im in images]
    if not parts or any(p.dim() != 4 for p in parts):
        raise ValueError(f"{name} must be one or more IMAGE tensors [N, H, W, 3]")
    sizes = sorted({tuple(p.shape[1:3]) for p in parts})
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise ValueError(f"{name} mixes image sizes ({listed}, as HxW); resize them to one size first "
                         f"(e.g. with Upscale Image)")
    return torch.cat(parts)


def _camera_theta(motion: str, amount: float, u: float) -> torch.Tensor:
    """Affine sampling matrix ``[2,3]`` (normalised coords) at progress ``u`` in [0, 1]."""
    a = amount * u
    scale, tx, ty = 1.0, 0.0, 0.0
    if motion == "zoom-in":
        scale = 1.0 / (1.0 + a)
    elif motion == "zoom-out":
        scale = 1.0 / (1.0 + amount - a)
    elif motion in ("pan-left", "pan-right", "pan-up", "pan-down"):
        scale = 1.0 / (1.0 + amount)  # zoomed in enough that the pan never leaves the image
        shift = (2 * u - 1) * (1 - scale)
        tx = {"pan-left": -shift, "pan-right": shift}.get(motion, 0.0)
        ty = {"pan-up": -shift, "pan-down": shift}.get(motion, 0.0)
    return torch.tensor([[scale, 0.0, tx], [0.0, scale, ty]])


def image_to_coarse_video(image: torch.Tensor, frames: int, motion: str = "zoom-in",
                          amount: float = 0.25) -> torch.Tensor:
    """Dreamix Sec. 4.2: one image ``[H,W,3]`` (or ``[1,H,W,3]``) -> a coarse video ``[frames,H,W,3]`` by
    replication and a simple camera motion: zoom in/out by ``amount`` (1.25x at 0.25), pan across the image after
    zooming in by ``1 + amount``, or a perspective tilt (the far edge narrows by ``amount`` over the clip)."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"image must be one image, got a batch of {image.shape[0]}; pick one (Image From Batch)")
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"image must be an IMAGE [H, W, 3], got shape {tuple(image.shape)}")
    if motion not in CAMERA_MOTIONS:
        raise ValueError(f"camera_motion={motion!r}; expected one of {list(CAMERA_MOTIONS)}")
    _check_factor(frames, "frames")
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"motion_amount={amount!r} must be in [0, 1]")
    h, w, _ = image.shape
    src = image.float().permute(2, 0, 1)[None].expand(frames, -1, -1, -1)
    progress = [i / max(frames - 1, 1) for i in range(frames)]
    if motion == "perspective":
        grid = _perspective_grid(h, w, amount, progress)
    else:
        theta = torch.stack([_camera_theta(motion, amount, u) for u in progress])
        grid = F.affine_grid(theta, [frames, 3, h, w], align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def _perspective_grid(h: int, w: int, amount: float, progress: list[float]) -> torch.Tensor:
    """Sampling grids ``[F,h,w,2]`` of a tilt: row ``y`` is scaled horizontally by ``1 - a (1 - y') / 2`` with ``y'``
    in [0, 1] from top to bottom, ``a`` growing to ``amount``: the top recedes as if the camera tilted up."""
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grids = []
    for u in progress:
        shrink = 1 - amount * u * (1 - (gy + 1) / 2) / 2  # 1 at the bottom row
        grids.append(torch.stack([gx / shrink, gy], dim=-1))  # sampling wider on top = the image looks narrower
    return torch.stack(grids)
