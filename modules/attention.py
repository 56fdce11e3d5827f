"""Space-time attention processors for inflated UNets.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.1 "Network inflation":
- *Sparse-causal attention* (ST-Attn): the queries of frame ``i`` attend to the keys/values of frame 0 and of frame
  ``i-1`` (frame 0 sees itself twice, which equals attending to itself once: duplicated keys only split the weights).
- *Temporal attention* (T-Attn): attention over the ``f`` frames at each spatial position.

Video-P2P (Liu et al., 2023), Sec. 3.2 and its ``FrameAttention``: the queries of every frame attend to the
keys/values of frame 0 only (:class:`FirstFrameAttnProcessor`); the rest of the block is Tune-A-Video's.

Both are diffusers attention processors: the :class:`~diffusers.models.attention_processor.Attention` module owns the
weights (``to_q``, ``to_k``, ``to_v``, ``to_out``), these classes own the maths, and ``F.scaled_dot_product_attention``
does the work. Token layout entering ``attn1``/``attn_temp`` is ``(b f) n c``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over ``[B,n,C]`` projections with ``attn.heads`` heads, then the output projection. Returns ``[B,n,C]``."""
    h = attn.heads
    dtype = q.dtype
    if attn.upcast_attention and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h), scale=attn.scale)
    out = rearrange(out, "b h n d -> b n (h d)").to(dtype)
    return attn.to_out[1](attn.to_out[0](out))


def previous_frame_index(num_frames: int, device=None) -> torch.Tensor:
    """``[0, 0, 1, ..., f-2]``: the frame each frame's second key/value set comes from."""
    idx = torch.arange(num_frames, device=device) - 1
    idx[0] = 0
    return idx


def sparse_causal_kv(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Gather keys or values of the first and previous frame: ``[(b f), n, c] -> [(b f), 2n, c]``."""
    x = rearrange(x, "(b f) n c -> b f n c", f=num_frames)
    first = x[:, :1].expand(-1, num_frames, -1, -1)
    prev = x[:, previous_frame_index(num_frames, x.device)]
    return rearrange(torch.cat([first, prev], dim=2), "b f n c -> (b f) n c")


class SparseCausalAttnProcessor:
    """Self-attention where frame ``i`` attends to frames ``0`` and ``i-1`` (Tune-A-Video ST-Attn)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[(b f), n, c]`` -> ``[(b f), n, c]``."""
        q = attn.to_q(hidden_states)
        k = sparse_causal_kv(attn.to_k(hidden_states), num_frames)
        v = sparse_causal_kv(attn.to_v(hidden_states), num_frames)
        return _attend(attn, q, k, v)


def first_frame_kv(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Keys or values of each clip's first frame for every frame: ``[(b f), n, c] -> [(b f), n, c]``."""
    x = rearrange(x, "(b f) n c -> b f n c", f=num_frames)
    return rearrange(x[:, :1].expand(-1, num_frames, -1, -1), "b f n c -> (b f) n c")


class FirstFrameAttnProcessor:
    """Self-attention where every frame attends to frame 0 of its clip (Video-P2P's ``FrameAttention``)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[(b f), n, c]`` -> ``[(b f), n, c]``."""
        q = attn.to_q(hidden_states)
        k = first_frame_kv(attn.to_k(hidden_states), num_frames)
        v = first_frame_kv(attn.to_v(hidden_states), num_frames)
        return _attend(attn, q, k, v)


class TemporalAttnProcessor:
    """Attention across frames at each spatial position (Tune-A-Video T-Attn)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[(b f), d, c]`` (``d`` spatial tokens) -> same shape."""
        d = hidden_states.shape[1]
        x = rearrange(hidden_states, "(b f) d c -> (b d) f c", f=num_frames)
        out = _attend(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x))
        return rearrange(out, "(b d) f c -> (b f) d c", d=d)


class PlainAttnProcessor:
    """Ordinary (cross- or self-) attention with SDPA; accepts and ignores ``num_frames``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[B, n, c]``, ``encoder_hidden_states``: ``[B, m, d]`` or None -> ``[B, n, c]``."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))
