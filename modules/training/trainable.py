"""Which parameters a tuning run trains: module-name patterns (presets or the user's), mapped onto either base.

Tune-A-Video (Wu et al., ICCV 2023, Sec. 4.2; ``train_tuneavideo.py``'s ``trainable_modules``) names modules by the
*end* of their dotted name (``attn1.to_q``); globs (``*``, ``?``) match whole names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..networks.base import NetworkBase


def parse_patterns(text: str | Sequence[str], presets: Mapping[str, tuple[str, ...]] | None = None
                   ) -> tuple[str, ...]:
    """A preset name (a key of ``presets``, e.g. ``"tune-a-video"``) or comma/newline-separated module-name
    patterns."""
    if isinstance(text, str):
        if presets and text.strip() in presets:
            return tuple(presets[text.strip()])
        text = text.replace("\n", ",").split(",")
    return tuple(p.strip() for p in text if p.strip())


def patterns_for(unet, patterns: Sequence[str]) -> tuple[str, ...]:
    """Patterns written for the inflated UNet's temporal layer (``attn_temp``) on any base. An AnimateDiff UNet has no
    ``attn_temp``: there its temporal attentions are the motion modules' ``attn1``/``attn2``, which presets'
    ``attn1.*``/``attn2.*`` suffixes already select, so the ``attn_temp`` patterns are dropped."""
    if unet.base is not NetworkBase.ANIMATEDIFF:
        return tuple(patterns)
    kept = tuple(p for p in patterns if "attn_temp" not in p)
    if not kept:
        raise ValueError("trainable names only attn_temp, which an AnimateDiff VIDEO_UNET does not have; use "
                         "'motion_modules' for its temporal layers")
    return kept


def select_trainable(unet: torch.nn.Module, patterns: Iterable[str]) -> list[str]:
    """State-dict names of the parameters inside modules matching ``patterns``.

    A pattern matches a module whose dotted name *ends with* it (as in the reference's ``trainable_modules``), or,
    if it contains ``*``/``?``, whose name matches it as a glob. Raises if a pattern matches nothing.
    """
    patterns = list(patterns)
    modules = dict(unet.named_modules())
    names: set[str] = set()
    for pat in patterns:
        glob = any(c in pat for c in "*?[")
        hits = [m for m in modules if m and (fnmatch.fnmatchcase(m, pat) if glob else m.endswith(pat))]
        if not hits:
            raise ValueError(f"trainable pattern {pat!r} matches no module of the UNet "
                             "(module names look like 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q')")
        for m in hits:
            names.update(f"{m}.{p}" for p, _ in modules[m].named_parameters())
    return sorted(names)
