"""Atomic, non-clobbering file writes: nothing a user made is ever half-written or silently replaced."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unique_path(folder, stem: str, ext: str = "") -> Path:
    """``folder/stem_00001.ext`` (or the folder ``folder/stem_00001`` when ``ext`` is empty): the first such name that
    does not exist yet."""
    folder = Path(folder)
    suffix = f".{ext.lstrip('.')}" if ext else ""
    n = 1
    while (folder / f"{stem}_{n:05d}{suffix}").exists():
        n += 1
    return folder / f"{stem}_{n:05d}{suffix}"


def atomic_write(path, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it into place.

    Raises FileExistsError naming ``path`` if it exists (also if it appeared meanwhile) and ``overwrite`` is False.
    The temp file is removed on any failure; the result gets the usual permissions (0666 minus umask).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never clobber
    except FileExistsError as e:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
