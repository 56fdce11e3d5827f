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

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .convert.identity import fingerprints_match, same_up_to_storage
from .files import PICKLE_SUFFIXES
from .files.atomic import atomic_write
from .files.reader import read_safetensors
from .finite import check_finite_tensors
from .networks.base import NetworkBase
from .networks.inflate import ATTENTION_VARIANTS, TEMPORAL_MARKER, TEMPORAL_VARIANTS
from .video_unet import TuneRecord, VideoUNet

logger = logging.getLogger(__name__)

FORMAT = "tunevideo.delta.v1"


class BaseMismatchError(ValueError):
    """A delta was made from another base model than the one it is applied to."""


def delta_metadata(model: VideoUNet) -> dict[str, str]:
    last = model.history[-1] if model.history else None
    meta = {
        "format": FORMAT,
        "method": last.method if last else "inflated",
        "base_model_hash": model.base_hash,
        "base_fingerprint": model.base_fingerprint,
        "attention": model.network.attention,
        "attention_options": json.dumps(model.network.attention_options, sort_keys=True),
        "temporal": model.network.temporal,
        "prediction_type": model.schedule.prediction_type,
        "latent_scale": repr(model.latent_scale),
        "history": json.dumps([r.__dict__ for r in model.history]),
    }
    if model.network.base is NetworkBase.ANIMATEDIFF:  # which motion module
        info = model.network.info
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
    recorded = NetworkBase.of_recorded_attention(meta.get("attention", model.network.attention))
    if recorded is not model.network.base:
        made = "the AnimateDiff base (AnimateDiffVideoUNet)" if recorded is NetworkBase.ANIMATEDIFF else \
            "an inflated UNet (InflateUNetTemporal)"
        raise ValueError(f"{Path(path).name} was tuned on {made}; build this VIDEO_UNET the same way")
    recorded_mm = meta.get("motion_module_hash", "")
    own_mm = model.network.info.hash if model.network.base is NetworkBase.ANIMATEDIFF else ""
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
