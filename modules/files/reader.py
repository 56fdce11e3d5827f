"""The one safetensors reader of the pack: every weight file (deltas, LoRAs, motion modules, CLIP scorers,
checkpoints) is read here, so a damaged, truncated or non-safetensors file always gives one clear error that names
the file and says what to do, never safetensors' bare "header too large"."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

_ERRORS = (SafetensorError, OSError, RuntimeError, ValueError, TypeError, MemoryError)


def unreadable(path: Path, what: str, e: BaseException) -> ValueError:
    """The error for a file that is not readable safetensors (``what``: e.g. 'motion module')."""
    detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return ValueError(f"{what} {path}: not a readable safetensors file ({type(e).__name__}: {detail}); it is damaged, "
                      f"incomplete (an interrupted download or copy) or not a safetensors file: download or save it "
                      f"again")


def _existing(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def read_header(path: str | os.PathLike, what: str = "weights file") -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, without reading its tensors."""
    path = _existing(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except _ERRORS as e:
        raise unreadable(path, what, e) from e


def read_safetensors(path: str | os.PathLike, what: str = "weights file",
                     select: Callable[[str], bool] | None = None,
                     convert: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file: the tensors whose name passes ``select`` (all by default),
    each passed through ``convert(name, tensor)`` as it is read (so a dtype cast never holds two copies)."""
    path = _existing(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {}
            for k in f.keys():
                if select is None or select(k):
                    t = f.get_tensor(k)
                    tensors[k] = convert(k, t) if convert is not None else t
    except _ERRORS as e:
        raise unreadable(path, what, e) from e
    return tensors, meta
