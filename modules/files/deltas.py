"""Saving and loading tuned video UNets as small safetensors deltas.

A delta holds only what tuning added or changed (Tune-A-Video: ``attn_temp``/``norm_temp`` everywhere plus the tuned
``attn1.to_q``/``attn2.to_q``), under the key names of Tune-A-Video's ``UNet3DConditionModel``
(``down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight``), so files move between this pack and the
reference code. Metadata records the method, a hash of the base 2D UNet, frames, size, prompt and steps.

The official code saves the *whole* UNet (``unet/diffusion_pytorch_model.safetensors``); :func:`load_delta` accepts
that layout too, keeping only tensors that differ from the base. Only safetensors are read, never pickles.
Writes are atomic (temp file + rename) and never overwrite an existing file unless asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..convert.unet import strip_ldm_prefix
from ..finite import check_finite_tensors
from ..networks.inflate import ATTENTION_VARIANTS, TEMPORAL_MARKER, TEMPORAL_VARIANTS
from ..video_unet import TuneRecord, VideoUNet
from . import PICKLE_SUFFIXES
from .atomic import atomic_write
from .reader import read_safetensors

logger = logging.getLogger(__name__)

FORMAT = "tunevideo.delta.v1"
_HASH_VALUES = 4096


class BaseMismatchError(ValueError):
    """A delta was made from another base model than the one it is applied to."""


def unet_hash(ldm_state_dict: Mapping[str, torch.Tensor]) -> str:
    """Short fingerprint of an LDM-layout UNet (ComfyUI ``diffusion_model`` keys, with or without the checkpoint
    prefix). It covers every key and shape and the first 4096 values of every tensor, rounded to fp16 so fp32 and fp16
    copies of one model agree; it reads ~5 MB of an 860M-parameter UNet, so it is cheap on every load."""
    sd = strip_ldm_prefix(ldm_state_dict)
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key]
        h.update(f"{key}:{tuple(t.shape)};".encode())
        head = t.detach().reshape(-1)[:_HASH_VALUES].to("cpu", torch.float16).float()
        h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


_FINGERPRINT_PER_TENSOR = 4


def _storage_tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) within which two copies of one weight agree when each was rounded to its dtype, possibly twice
    (fp32 -> fp16 -> bf16): one unit in the last place of the coarsest dtype, plus its subnormal spacing."""
    infos = [torch.finfo(d) for d in dtypes if d.is_floating_point]
    coarse = max(infos, key=lambda i: i.eps, default=torch.finfo(torch.float32))
    return 2 * coarse.eps, max(i.smallest_normal * i.eps for i in infos) if infos else 0.0


def same_up_to_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same weight, up to rounding to their storage dtypes."""
    rtol, atol = _storage_tolerance(a.dtype, b.dtype)
    return bool(torch.allclose(a.detach().float().cpu(), b.detach().float().cpu(), rtol=rtol, atol=atol))


def unet_fingerprint(ldm_state_dict: Mapping[str, torch.Tensor]) -> str:
    """A few values of every tensor (4 per tensor, evenly spaced) and the coarsest storage dtype, encoded as text.

    Unlike :func:`unet_hash` it compares with a tolerance (:func:`fingerprints_match`), so the same base held in
    bf16, fp16, fp32 or fp8 is recognised; ~2800 values (11 KB) for SD1.5."""
    sd = strip_ldm_prefix(ldm_state_dict)
    values, coarse = [], torch.float32
    for key in sorted(sd):
        flat = sd[key].detach().reshape(-1)
        if not flat.is_floating_point() or flat.numel() == 0:
            continue
        if torch.finfo(flat.dtype).eps > torch.finfo(coarse).eps:
            coarse = flat.dtype
        last, k = flat.numel() - 1, _FINGERPRINT_PER_TENSOR
        idx = torch.tensor([i * last // (k - 1) for i in range(k)], device=flat.device)  # exact for any size
        values.append(flat[idx].to("cpu", torch.float32))
    data = torch.cat(values).numpy().tobytes() if values else b""
    return f"{str(coarse).removeprefix('torch.')}:{base64.b64encode(data).decode()}"


def fingerprints_match(a: str, b: str) -> bool:
    """Whether two :func:`unet_fingerprint` strings come from the same weights, up to their storage rounding."""
    try:
        (dtype_a, data_a), (dtype_b, data_b) = a.split(":", 1), b.split(":", 1)
        ta = torch.frombuffer(bytearray(base64.b64decode(data_a)), dtype=torch.float32)
        tb = torch.frombuffer(bytearray(base64.b64decode(data_b)), dtype=torch.float32)
        dtypes = (getattr(torch, dtype_a), getattr(torch, dtype_b))
    except (ValueError, AttributeError, TypeError):
        return False
    if ta.shape != tb.shape:
        return False
    rtol, atol = _storage_tolerance(*dtypes)
    return bool(torch.allclose(ta, tb, rtol=rtol, atol=atol))


def base_identity(ldm_state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``base_hash`` and ``base_fingerprint`` of a base UNet, as :class:`~.video_model.VideoUNet` fields."""
    return {"base_hash": unet_hash(ldm_state_dict), "base_fingerprint": unet_fingerprint(ldm_state_dict)}


def delta_metadata(model: VideoUNet) -> dict[str, str]:
    last = model.history[-1] if model.history else None
    meta = {
        "format": FORMAT,
        "method": last.method if last else "inflated",
        "base_model_hash": model.base_hash,
        "base_fingerprint": model.base_fingerprint,
        "attention": model.network.attention,
        "attention_options": json.dumps(getattr(model.network, "attention_options", {}), sort_keys=True),
        "temporal": getattr(model.network, "temporal", "tune-a-video"),
        "prediction_type": model.schedule.prediction_type,
        "latent_scale": repr(model.latent_scale),
        "history": json.dumps([r.__dict__ for r in model.history]),
    }
    info = getattr(model.network, "info", None)  # the AnimateDiff base: which motion module
    if info is not None:
        meta.update(motion_module=info.name, motion_module_hash=info.hash)
    if last:
        meta.update(frames=str(last.frames), width=str(last.width), height=str(last.height), prompt=last.prompt,
                    steps=str(last.steps), learning_rate=repr(last.learning_rate), trainable=",".join(last.trainable))
    return meta


def save_delta(model: VideoUNet, path: str | os.PathLike, overwrite: bool = False) -> dict[str, str]:
    """Write the tuned/added tensors of ``model`` to ``path`` (``.safetensors``). Returns the metadata written."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"delta file name {path.name!r} must end with .safetensors")
    state = model.network.state_dict()
    tensors = {k: state[k].detach().to("cpu").contiguous() for k in model.delta_names()}
    check_finite_tensors(tensors, f"delta {path.name}")
    meta = delta_metadata(model)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite)
    logger.info("saved %d tensors to %s", len(tensors), path)
    return meta


def _resolve(path: Path) -> Path:
    if path.is_dir():
        for cand in ("unet/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"):
            if (path / cand).is_file():
                return path / cand
        raise FileNotFoundError(f"{path} is a folder without unet/diffusion_pytorch_model.safetensors "
                                f"(the Tune-A-Video output layout)")
    if not path.exists():
        raise FileNotFoundError(f"tuned weights file not found: {path}")
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"{path.name}: only .safetensors files are read (pickled {path.suffix} files can run code); "
                         f"convert it with safetensors first")
    return path


def read_delta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a delta or full Tune-A-Video UNet file (or its output folder)."""
    return read_safetensors(_resolve(Path(path)), "tuned weights")


def load_delta(model: VideoUNet, path: str | os.PathLike, check_base: bool = True) -> VideoUNet:
    """Apply a delta (or a full Tune-A-Video UNet checkpoint) to inflated ``model``; returns a new model.

    Raises:
        BaseMismatchError: the file records another base model hash (or, for a full checkpoint, its frozen weights
            differ from the base), unless ``check_base`` is False.
        ValueError: unknown keys or shapes that do not fit this UNet.
    """
    tensors, meta = read_delta(path)
    fmt = meta.get("format", FORMAT)
    if fmt != FORMAT and fmt.startswith("tunevideo.delta."):
        raise ValueError(f"{Path(path).name} has format {fmt}, written by a newer TuneVideo than this one "
                         f"({FORMAT}); update the pack")
    attention = meta.get("attention", model.network.attention)
    if "animatediff" in (attention, model.network.attention) and attention != model.network.attention:
        made = "the AnimateDiff base (AnimateDiffVideoUNet)" if attention == "animatediff" else \
            "an inflated UNet (InflateUNetTemporal)"
        raise ValueError(f"{Path(path).name} was tuned on {made}; build this VIDEO_UNET the same way")
    recorded_mm = meta.get("motion_module_hash", "")
    own_mm = getattr(getattr(model.network, "info", None), "hash", "")
    if check_base and recorded_mm and own_mm and recorded_mm != own_mm:
        raise BaseMismatchError(f"{Path(path).name} was tuned with motion module {meta.get('motion_module')} "
                                f"({recorded_mm}); this VIDEO_UNET uses {model.network.info.name} ({own_mm})")
    model = _with_recorded_layers(model, meta, Path(path).name)
    own = model.network.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{Path(path).name}: {len(unknown)} keys are not Tune-A-Video UNet keys of this model, "
                         f"e.g. {unknown[:3]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{Path(path).name}: {k} has shape {tuple(v.shape)}, this model needs "
                             f"{tuple(own[k].shape)} (made for another model size?)")
    if check_base:
        _check_base(model, meta, Path(path).name)
    if len(tensors) == len(own):  # full reference checkpoint: keep only what differs from the base
        tensors = _changed_only(tensors, own, check_base, Path(path).name)
    return model.with_tensors(tensors, history=model.history + _history(meta))


def _with_recorded_layers(model: VideoUNet, meta: Mapping[str, str], name: str) -> VideoUNet:
    """The file says how it was tuned: spatial attention (+ options) and temporal layer. Files without the
    ``temporal`` entry (older deltas, official checkpoints) were made with Tune-A-Video's temporal layer."""
    unet = model.network
    attention = meta.get("attention", unet.attention)
    try:
        options = json.loads(meta.get("attention_options", "{}"))
    except ValueError as e:
        raise ValueError(f"{name}: metadata 'attention_options' is unreadable ({e})") from e
    if (attention, options) != (unet.attention, unet.attention_options):
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f"{name} was tuned with attention {attention!r}, which this TuneVideo does "
                             f"not know ({sorted(ATTENTION_VARIANTS)}); update the pack")
        logger.info("%s: switching spatial attention %s -> %s %s as recorded", name, unet.attention, attention,
                    options)
        unet = unet.with_attention(attention, options)
    temporal = meta.get("temporal", "tune-a-video")
    if temporal != unet.temporal:
        if temporal not in TEMPORAL_VARIANTS:
            raise ValueError(f"{name} was tuned with temporal layer {temporal!r}, which this TuneVideo does not "
                             f"know ({list(TEMPORAL_VARIANTS)}); update the pack")
        logger.info("%s: switching temporal layer %s -> %s as recorded", name, unet.temporal, temporal)
        unet = unet.with_temporal(temporal)
    return model if unet is model.network else model.replace(network=unet)


def _history(meta: Mapping[str, str]) -> tuple[TuneRecord, ...]:
    """The tuning runs recorded in a delta (none for an official full checkpoint, which records nothing)."""
    try:
        return tuple(TuneRecord(**{**r, "trainable": tuple(r.get("trainable", ()))})
                     for r in json.loads(meta.get("history", "[]")))
    except (TypeError, ValueError) as e:
        raise ValueError(f"delta metadata 'history' is unreadable ({e})") from e


def _check_base(model: VideoUNet, meta: Mapping[str, str], name: str) -> None:
    """Same hash, or (the same base at another precision) matching fingerprints; else BaseMismatchError."""
    recorded = meta.get("base_model_hash", "")
    if not recorded or not model.base_hash or recorded == model.base_hash:
        return
    if model.base_fingerprint and fingerprints_match(meta.get("base_fingerprint", ""), model.base_fingerprint):
        logger.info("%s: base %s is this MODEL (%s) held at another precision", name, recorded, model.base_hash)
        return
    raise BaseMismatchError(f"{name} was tuned from base model {recorded}, but this MODEL is {model.base_hash}; "
                            f"load the checkpoint it was made from")


def _changed_only(tensors, own, check_base, name):
    changed = {k: v for k, v in tensors.items() if TEMPORAL_MARKER in k or not same_up_to_storage(v, own[k])}
    frozen_changed = [k for k in changed if TEMPORAL_MARKER not in k and ".to_q." not in k]
    if check_base and frozen_changed:
        raise BaseMismatchError(
            f"{name}: {len(frozen_changed)} weights that Tune-A-Video never tunes differ from this MODEL "
            f"(e.g. {frozen_changed[0]}): it was made from another base model")
    return changed
