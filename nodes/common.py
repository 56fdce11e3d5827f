"""Input specs and output files that several node faces share."""

from __future__ import annotations

import re
from pathlib import Path

from ..modules.files.atomic import unique_path
from . import host

SEED_MAX = 2**63 - 1


def seed_input(default: int, tooltip: str) -> tuple:
    """The ``seed`` widget: a non-negative INT with ComfyUI's control-after-generate (the pack's web extension starts
    it at 'fixed' on the tuning nodes, web/tunevideo.js)."""
    return ("INT", {"default": default, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                    "tooltip": tooltip})


def save_path(prefix: str, folder: str, stem_suffix: str = "") -> Path:
    """A new ``.safetensors`` path for ``filename_prefix`` (+ ``stem_suffix``) inside ``models/<folder>``, a counter
    appended so nothing is overwritten; refuses prefixes that leave the folder or use other characters."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError(f"filename_prefix must not be empty: give a name inside models/{folder}, e.g. 'edits/run'")
    if not re.fullmatch(r"[\w\-. /]+", prefix) or ".." in prefix or prefix.startswith("/"):
        raise ValueError(f"filename_prefix {prefix!r} may only use letters, digits, '-', '_', '.', ' ' and '/' "
                         f"sub-folders inside models/{folder}")
    target = host.model_dir(folder) / prefix
    return unique_path(target.parent, target.name + stem_suffix, "safetensors")
