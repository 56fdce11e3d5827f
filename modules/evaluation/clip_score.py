"""CLIP metrics of an edited video, as the tuning-based editing papers report them.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 5 "Automatic metrics", followed by Video-P2P, Dreamix, EI² and others:

- **frame consistency**: CLIP (Radford et al., 2021) image embeddings of every output frame; the average cosine
  similarity over all pairs of frames (``i < j``). 1.0 for a still video. Papers print it x 100.
- **textual alignment**: the CLIP score, ``100 * cos(image embedding, text embedding)``, of every frame with the
  edited prompt, averaged over the frames (not clamped at 0; torchmetrics' CLIPScore clamps).
- **source similarity** (optional): ``cos`` of each edited frame with its source frame, the fidelity number Dreamix
  and others report next to the two above.

Embeddings are the projected ones (``visual_projection`` / ``text_projection``) that CLIP compares. Preprocessing is
CLIP's, done with PIL exactly as ``transformers.CLIPImageProcessor`` does it: frames as 8-bit RGB, bicubic resize of
the shortest side to 224 (the long side ``int(224 * long / short)``), centre crop 224, then the CLIP mean/std.

Models are read from local files only (never downloaded, never pickles): a transformers ``CLIPModel`` folder or a
single ``.safetensors`` file in transformers or OpenAI key layout (:mod:`.clip_files`). This module never imports
ComfyUI: the node turns a ComfyUI CLIP_VISION into embeddings and calls :func:`score_embeddings`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, clip/clip.py _transform
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SCORE_SCALE = 100.0  # Tune-A-Video Sec. 5: "CLIP score", 100 x cosine


@dataclass(frozen=True)
class ClipScoreDefaults:
    """The papers' evaluation setting (Tune-A-Video Sec. 5: "CLIP ViT-L/14", all frames of the output video)."""

    image_size: int = 224  # ViT-L/14 input resolution
    batch_size: int = 16  # frames per CLIP forward pass (memory bound only; results do not depend on it)


CLIP_EVAL = ClipScoreDefaults()

INSTALL_HINT = ("text alignment needs a CLIP with both towers and their projections, as the papers use (ViT-L/14): "
                "put the transformers folder of openai/clip-vit-large-patch14 (config.json, model.safetensors, "
                "vocab.json, merges.txt) into ComfyUI/models/clip_vision/ (CLI: pass it with --clip)")


class ClipModelError(ValueError):
    """A CLIP file or folder that cannot be used for the requested metric."""


# ------------------------------------------------------------------------------------------------- preprocessing
def _to_uint8(frames: torch.Tensor, name: str) -> np.ndarray:
    """``[F, H, W, C]`` float in 0..1 (C = 3 or 4, alpha dropped) -> ``[F, H, W, 3]`` uint8, as a saved video."""
    if not torch.is_tensor(frames) or frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be an IMAGE [frames, height, width, 3], got "
                         f"{tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"{name} holds no pixels (shape {tuple(frames.shape)})")
    x = frames[..., :3].detach().float().clamp(0, 1)
    return np.ascontiguousarray((x * 255).round().to(torch.uint8).cpu().numpy())


def resize_crop(frames: torch.Tensor, size: int = CLIP_EVAL.image_size, name: str = "frames") -> torch.Tensor:
    """CLIP's geometry: ``[F, H, W, C]`` in 0..1 -> ``[F, size, size, 3]`` in 0..1 on the 8-bit grid.

    Each frame is quantised to 8 bits, its shortest side resized to ``size`` with PIL bicubic (the long side to
    ``int(size * long / short)``, transformers' ``get_resize_output_image_size``), then centre-cropped at
    ``((h - size) // 2, (w - size) // 2)``. Frames already ``size x size`` are only quantised (CLIP does the same).
    """
    arr = _to_uint8(frames, name)
    out = np.empty((arr.shape[0], size, size, 3), dtype=np.uint8)
    h, w = arr.shape[1:3]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nh, nw = (new_long, size) if w <= h else (size, new_long)
    top, left = (nh - size) // 2, (nw - size) // 2
    for i, a in enumerate(arr):
        img = Image.fromarray(a)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), resample=Image.Resampling.BICUBIC)
        out[i] = np.asarray(img)[top:top + size, left:left + size]
    return torch.from_numpy(out).float() / 255.0


def normalize(pixels: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """``[F, S, S, 3]`` in 0..1 -> CLIP pixel values ``[F, 3, S, S]`` (``(x - mean) / std``)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels.permute(0, 3, 1, 2).float() - m) / s


def preprocess(frames: torch.Tensor, size: int = CLIP_EVAL.image_size, mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD, name: str = "frames") -> torch.Tensor:
    """CLIP preprocessing, equal to ``CLIPImageProcessor``: ``[F, H, W, C]`` 0..1 -> ``[F, 3, size, size]``."""
    return normalize(resize_crop(frames, size, name), mean, std)


# ------------------------------------------------------------------------------------------------------- the model
@dataclass
class ClipScoreModel:
    """A local CLIP for scoring: the image tower (always) and the text tower with its tokenizer (when present).

    ``model`` is a transformers ``CLIPModel`` (both towers) or ``CLIPVisionModelWithProjection`` (image only).
    Travels between ComfyUI nodes as the ``CLIP_SCORE_MODEL`` socket; it is never modified by scoring (moved to the
    compute device for a call and back).
    """

    model: torch.nn.Module
    tokenizer: object | None
    source: str
    image_size: int = CLIP_EVAL.image_size
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    notes: list[str] = field(default_factory=list)

    @property
    def has_text(self) -> bool:
        return (hasattr(self.model, "text_model") and hasattr(self.model, "text_projection")
                and self.tokenizer is not None)

    @property
    def projection_dim(self) -> int:
        return int(self.model.visual_projection.weight.shape[0])

    def describe(self) -> str:
        v = self.model.config.vision_config if hasattr(self.model.config, "vision_config") else self.model.config
        towers = "image + text" if self.has_text else "image only"
        return (f"CLIP {towers}, ViT {v.num_hidden_layers} layers x {v.hidden_size}, patch {v.patch_size}, "
                f"{self.image_size}px, projection {self.projection_dim} ({self.source})")

    def require_text(self) -> None:
        if not (hasattr(self.model, "text_model") and hasattr(self.model, "text_projection")):
            raise ClipModelError(f"{self.source} has no text tower or text projection (an image-only CLIP vision "
                                 f"model); {INSTALL_HINT}")
        if self.tokenizer is None:
            raise ClipModelError(f"{self.source} has a text tower but no tokenizer was found: put vocab.json + "
                                 f"merges.txt (or tokenizer.json) beside it, or pass the tokenizer folder (CLI: "
                                 f"--tokenizer; ComfyUI's comfy/sd1_tokenizer is CLIP ViT-L/14's)")


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


@torch.no_grad()
def image_embeddings(clip: ClipScoreModel, pixel_values: torch.Tensor,
                     batch_size: int = CLIP_EVAL.batch_size) -> torch.Tensor:
    """Projected CLIP image embeddings ``[F, P]`` (float32, not normalised) of ``pixel_values [F, 3, S, S]``."""
    device, dtype = _device_dtype(clip.model)
    out = []
    for chunk in pixel_values.split(batch_size):
        pooled = clip.model.vision_model(pixel_values=chunk.to(device, dtype)).pooler_output
        out.append(clip.model.visual_projection(pooled).float())
    return torch.cat(out)


def truncation_note(clip: ClipScoreModel, prompt: str) -> str | None:
    """The sentence saying that ``prompt`` is longer than CLIP's context and is truncated; None when it fits."""
    length = int(clip.model.config.text_config.max_position_embeddings)
    full = clip.tokenizer([prompt], padding=False, truncation=False)["input_ids"]
    n = len(full[0])
    if n <= length:
        return None
    return f"prompt has {n} tokens; CLIP reads the first {length} (truncated), so text alignment ignores the rest"


@torch.no_grad()
def text_embedding(clip: ClipScoreModel, prompt: str) -> torch.Tensor:
    """Projected CLIP text embedding ``[P]`` of one prompt (float32). Prompts over the context are truncated."""
    clip.require_text()
    check_prompt(prompt)
    length = int(clip.model.config.text_config.max_position_embeddings)
    note = truncation_note(clip, prompt)
    if note:
        logger.warning("%s", note)
    ids = clip.tokenizer([prompt], padding="max_length", max_length=length, truncation=True,
                         return_tensors="pt")["input_ids"]
    vocab = int(clip.model.config.text_config.vocab_size)
    if int(ids.max()) >= vocab:
        raise ClipModelError(f"the tokenizer gives token {int(ids.max())} but {clip.source}'s text tower has "
                             f"{vocab}; the tokenizer belongs to another model")
    device, _ = _device_dtype(clip.model)
    pooled = clip.model.text_model(input_ids=ids.to(device)).pooler_output
    return clip.model.text_projection(pooled).float()[0]


def check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be the edited prompt (non-empty text) for text alignment, got {prompt!r}")


# ------------------------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class VideoScore:
    """Scores of one video. Consistency and source similarity are cosines (1 = identical); text alignment is the
    CLIP score (100 x cosine). Per-frame lists: ``text_per_frame [F]``, ``consecutive [F-1]`` (frame i with i+1),
    ``source_per_frame [F]``. Metrics not computed are None."""

    frames: int
    frame_consistency: float
    consecutive: list[float]
    text_alignment: float | None = None
    text_per_frame: list[float] | None = None
    source_similarity: float | None = None
    source_per_frame: list[float] | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def pairwise_consistency(image_embeds: torch.Tensor) -> tuple[float, list[float]]:
    """``[F, P]`` -> (mean cosine over all pairs ``i < j``, cosines of consecutive frames ``[F-1]``)."""
    if image_embeds.dim() != 2 or image_embeds.shape[0] < 2:
        raise ValueError(f"frame consistency needs at least 2 frames, got {image_embeds.shape[0]}")
    e = F.normalize(image_embeds.double(), dim=-1)
    sim = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    consecutive = (e[:-1] * e[1:]).sum(-1)
    return float(sim[i, j].mean()), [float(c) for c in consecutive]


def clip_scores(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> list[float]:
    """Per-frame CLIP score ``100 * cos`` ``[F]`` of ``image_embeds [F, P]`` with ``text_embed [P]``."""
    if image_embeds.shape[-1] != text_embed.shape[-1]:
        raise ClipModelError(f"image embeddings have {image_embeds.shape[-1]} dims but the text embedding "
                             f"{text_embed.shape[-1]}: they come from different CLIP models")
    cos = F.cosine_similarity(image_embeds.double(), text_embed.double()[None], dim=-1)
    return [float(c) for c in CLIP_SCORE_SCALE * cos]


def score_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor | None = None,
                     text_image_embeds: torch.Tensor | None = None,
                     source_embeds: torch.Tensor | None = None) -> VideoScore:
    """All metrics from embeddings. ``image_embeds [F, P]`` serve frame consistency (and source similarity with
    ``source_embeds [F, P]`` of the same model); ``text_embeds [P]`` is scored against ``text_image_embeds [F, P']``
    (default ``image_embeds``), which must come from the text's own CLIP."""
    consistency, consecutive = pairwise_consistency(image_embeds)
    out = {"frames": int(image_embeds.shape[0]), "frame_consistency": consistency, "consecutive": consecutive}
    if text_embeds is not None:
        per = clip_scores(image_embeds if text_image_embeds is None else text_image_embeds, text_embeds)
        out.update(text_alignment=math.fsum(per) / len(per), text_per_frame=per)
    if source_embeds is not None:
        if source_embeds.shape != image_embeds.shape:
            raise ValueError(f"source frames give embeddings {tuple(source_embeds.shape)} but the edited frames "
                             f"{tuple(image_embeds.shape)}: pass as many source frames as edited frames")
        per = [float(c) for c in F.cosine_similarity(image_embeds.double(), source_embeds.double(), dim=-1)]
        out.update(source_similarity=math.fsum(per) / len(per), source_per_frame=per)
    return VideoScore(**out)


def check_frames(frames, name: str = "frames", minimum: int = 2) -> None:
    if not torch.is_tensor(frames) or frames.dim() != 4:
        raise ValueError(f"{name} must be an IMAGE [frames, height, width, 3], got "
                         f"{tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__}")
    if frames.shape[0] < minimum:
        raise ValueError(f"{name} has {frames.shape[0]} frame(s); frame consistency compares frames, so a video of "
                         f"at least {minimum} frames is needed")


def embed_frames(clip: ClipScoreModel, frames: torch.Tensor, name: str = "frames",
                 batch_size: int = CLIP_EVAL.batch_size) -> torch.Tensor:
    """``[F, H, W, C]`` in 0..1 -> projected image embeddings ``[F, P]`` (CLIP preprocessing included)."""
    return image_embeddings(clip, preprocess(frames, clip.image_size, clip.mean, clip.std, name), batch_size)


def score_video(clip: ClipScoreModel | None, frames: torch.Tensor, prompt: str | None,
                source: torch.Tensor | None = None, device: torch.device | str | None = None,
                batch_size: int = CLIP_EVAL.batch_size,
                image_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None) -> VideoScore:
    """The papers' metrics of one edited video ``frames [F, H, W, C]`` (0..1).

    ``clip`` scores everything with its own towers; ``prompt`` None skips text alignment, ``source [F, H', W', C]``
    adds source similarity. ``image_encoder`` (``[F, H, W, C] -> [F, P]``, e.g. a ComfyUI CLIP_VISION wrapped by the
    node) replaces ``clip``'s image tower for the image-only metrics (frame consistency, source similarity); text
    alignment always compares ``clip``'s own image and text embeddings (one shared space). ``clip`` None: image
    metrics only. The model is moved to ``device`` for the call and back afterwards.
    """
    if clip is None and image_encoder is None:
        raise ValueError("no CLIP model: connect a CLIP_SCORE_MODEL (text alignment and all else) or a CLIP_VISION "
                         "(frame consistency only)")
    check_frames(frames)
    if clip is None:
        prompt = None
    if prompt is not None:
        clip.require_text()
        check_prompt(prompt)
    if source is not None:
        check_frames(source, "source_frames", 1)
        if source.shape[0] != frames.shape[0]:
            raise ValueError(f"source_frames has {source.shape[0]} frames but frames has {frames.shape[0]}; "
                             f"pass the source clip exactly as it was edited (same start, count and stride)")
    home = _device_dtype(clip.model)[0] if clip is not None else None
    if clip is not None and device is not None:
        clip.model.to(device)
    try:
        own = embed_frames(clip, frames, "frames", batch_size) if clip is not None and (
            image_encoder is None or prompt is not None) else None
        text = text_embedding(clip, prompt) if prompt is not None else None
        encode = image_encoder or (lambda x: embed_frames(clip, x, "source_frames", batch_size))
        embeds = own if image_encoder is None else image_encoder(frames).float()
        src = encode(source).float() if source is not None else None
    finally:
        if clip is not None:
            clip.model.to(home)
    return score_embeddings(embeds, text, own, src)
