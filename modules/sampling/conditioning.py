"""Text conditioning with several entries and token lengths, combined the way ComfyUI combines it.

ComfyUI's samplers (``comfy/samplers.py``, ``calc_cond_batch``) treat a CONDITIONING as a list of entries. The
prediction for a list is the average of the per-entry predictions weighted by each entry's ``strength``
(``sum_i w_i * model(x, c_i) / sum_i w_i``); Conditioning (Combine) yields such a list. Entries run through the model
in one batch when their token counts allow: the shorter context is *repeated* up to the least common multiple of the
lengths (``comfy/conds.py``, ``CONDCrossAttn.concat``). Repetition leaves softmax cross-attention unchanged (every key
appears ``k`` times, so the weights only split), which is why it is a valid padding; ComfyUI gives up batching when a
context would grow more than 4x, and so do we.

A long prompt (over 75 tokens) is 154 or more tokens from CLIP Text Encode while an empty one is 77, so cond and
uncond of classifier-free guidance need exactly this whenever they are batched together.

Shapes: a context is ``[1|b, n, d]``; ``x`` is ``[b, c, f, h, w]``; ``model(x, t, context) -> [b, c, f, h, w]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: ComfyUI's limit on repeat-padding (``CONDCrossAttn.can_concat``): beyond it the entries run as separate batches.
MAX_REPEAT = 4

Entry = tuple[torch.Tensor, float]  # (context [1|b, n, d], weight)
Conditioning = Sequence[Entry]
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def as_entries(conditioning: torch.Tensor | Conditioning, name: str = "conditioning") -> list[Entry]:
    """A context tensor ``[b, n, d]`` (one entry of weight 1) or a list of ``(context, weight)`` -> checked entries."""
    entries = [(conditioning, 1.0)] if torch.is_tensor(conditioning) else list(conditioning)
    if not entries:
        raise ValueError(f"{name} is empty")
    dims = set()
    for i, (context, weight) in enumerate(entries):
        if not torch.is_tensor(context) or context.dim() != 3:
            raise ValueError(f"{name} entry {i} must be [b, n, d] text embeddings, got "
                             f"{getattr(context, 'shape', type(context).__name__)}")
        if not weight > 0:
            raise ValueError(f"{name} entry {i} has strength {weight}; it must be > 0")
        dims.add(context.shape[-1])
    if len(dims) > 1:
        raise ValueError(f"{name} mixes embedding widths {sorted(dims)}")
    return [(c, float(w)) for c, w in entries]


def repeat_to_length(context: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat the tokens of ``context`` ``[b, n, d]`` to ``length`` (a multiple of ``n``), as ComfyUI pads."""
    n = context.shape[1]
    if length % n:
        raise ValueError(f"cannot repeat {n} tokens to {length}: not a multiple")
    return context if length == n else context.repeat(1, length // n, 1)


def _groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices grouped so that each group's lcm of lengths is at most MAX_REPEAT x its shortest (first fit)."""
    groups: list[tuple[list[int], int, int]] = []  # (members, lcm, shortest)
    for i, n in enumerate(lengths):
        for g, (members, lcm, short) in enumerate(groups):
            new_lcm, new_short = math.lcm(lcm, n), min(short, n)
            if new_lcm // new_short <= MAX_REPEAT:
                members.append(i)
                groups[g] = (members, new_lcm, new_short)
                break
        else:
            groups.append(([i], n, n))
    return [members for members, _, _ in groups]


def entry_outputs(model: ModelFn, x: torch.Tensor, t: torch.Tensor, contexts: Sequence[torch.Tensor]) -> list[
        torch.Tensor]:
    """``model(x, t, c)`` for every context ``c`` (``[1|b, n_i, d]``), batched where lengths allow. Float32 out."""
    b = x.shape[0]
    out: list[torch.Tensor | None] = [None] * len(contexts)
    for members in _groups([c.shape[1] for c in contexts]):
        length = math.lcm(*(contexts[i].shape[1] for i in members))
        batch = torch.cat([repeat_to_length(contexts[i].expand(b, -1, -1), length) for i in members])
        xs = x if len(members) == 1 else torch.cat([x] * len(members))
        for i, part in zip(members, model(xs, t, batch).float().chunk(len(members)), strict=True):
            out[i] = part
    return out


def combined_outputs(model: ModelFn, x: torch.Tensor, t: torch.Tensor,
                     sides: Sequence[Conditioning]) -> list[torch.Tensor]:
    """For each side (e.g. ``[uncond, cond]``), the strength-weighted mean of its entries' outputs (ComfyUI's rule),
    with every entry of every side batched into as few model calls as the token lengths allow."""
    flat = [entry for side in sides for entry in side]
    outputs = iter(entry_outputs(model, x, t, [c for c, _ in flat]))
    result = []
    for side in sides:
        total = sum(w for _, w in side)
        result.append(sum(w / total * next(outputs) for _, w in side))
    return result
