"""Space-time attention processors for inflated UNets.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.1 "Network inflation":
- *Sparse-causal attention* (ST-Attn): the queries of frame ``i`` attend to the keys/values of frame 0 and of frame
  ``i-1`` (frame 0 sees itself twice, which equals attending to itself once: duplicated keys only split the weights).
- *Temporal attention* (T-Attn): attention over the ``f`` frames at each spatial position.

Video-P2P (Liu et al., 2023), Sec. 3.2 and its ``FrameAttention``: the queries of every frame attend to the
keys/values of frame 0 only (:class:`FirstFrameAttnProcessor`); the rest of the block is Tune-A-Video's.

EI² (Zhang et al., NeurIPS 2023), Sec. 3 / Fig. 2(c): *FFAM* (:class:`FineCoarseAttnProcessor`), where each patch
attends to the fine patches of its own frame and to average-pooled (coarse) patches of every other frame, and the
attention of *STAM* (:class:`StamTemporalAttnProcessor`), temporal attention with a normalised mapping (see
:mod:`.ei2` for what was chosen where the paper's text was not available).

All are diffusers attention processors: the :class:`~diffusers.models.attention_processor.Attention` module owns the
weights (``to_q``, ``to_k``, ``to_v``, ``to_out``), these classes own the maths, and ``F.scaled_dot_product_attention``
does the work. Token layout entering ``attn1``/``attn_temp`` is ``(b f) n c``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

# --- attention maths shared by every processor (here and Video-P2P's controlled ones) -------------------------------

def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, n, (h d)] -> [B, h, n, d]``."""
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, h, n, d] -> [B, n, (h d)]``."""
    return rearrange(x, "b h n d -> b n (h d)")


def output_projection(attn, x: torch.Tensor) -> torch.Tensor:
    """``attn``'s output projection and dropout, ``to_out``: ``[B, n, C] -> [B, n, C_out]``."""
    return attn.to_out[1](attn.to_out[0](x))


def attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over ``[B,n,C]`` projections with ``attn.heads`` heads, then the output projection. Returns ``[B,n,C]``.

    The probabilities are never materialised; use :func:`attention_probs` + :func:`attend_probs` where they are
    stored or edited."""
    h = attn.heads
    dtype = q.dtype
    if attn.upcast_attention and dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(split_heads(q, h), split_heads(k, h), split_heads(v, h), scale=attn.scale)
    return output_projection(attn, merge_heads(out).to(dtype))


def attention_probs(attn, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Explicit attention probabilities ``[B, h, n, m]`` of projections ``q`` ``[B, n, C]``, ``k`` ``[B, m, C]``:
    per-row softmax of ``q k^T * scale``, in float32 when the module asks to upcast."""
    q, k = split_heads(q, attn.heads), split_heads(k, attn.heads)
    if attn.upcast_attention:
        q, k = q.float(), k.float()
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)


def attend_probs(attn, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply probabilities ``[B, h, n, m]`` (from :func:`attention_probs`, possibly edited) to values ``[B, m, C]``,
    then the output projection: ``[B, n, C]``."""
    out = probs.to(v.dtype) @ split_heads(v, attn.heads)
    return output_projection(attn, merge_heads(out))


def previous_frame_index(num_frames: int, device=None) -> torch.Tensor:
    """``[0, 0, 1, ..., f-2]``: the frame each frame's second key/value set comes from."""
    idx = torch.arange(num_frames, device=device) - 1
    idx[0] = 0
    return idx


def anchored_kv(attn, k: torch.Tensor, v: torch.Tensor, num_frames: int, anchor=None):
    """Frame 0's keys and values ``[b, n, c]`` that the clip's frames attend to: None, None without an ``anchor``
    (each clip's own first frame), else the whole clip's frame 0 from the :class:`~..sampling.anchor.FrameAnchor` of a
    windowed call (recorded by ``attn`` in the window holding frame 0, read in the others)."""
    if anchor is None:
        return None, None
    first = (rearrange(x, "(b f) n c -> b f n c", f=num_frames)[:, 0] for x in (k, v))
    return anchor.exchange(attn, *first)


def sparse_causal_kv(x: torch.Tensor, num_frames: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Gather keys or values of the first and previous frame: ``[(b f), n, c] -> [(b f), 2n, c]``. ``first``
    ``[b, n, c]``: the anchor frame's, instead of the clip's own first frame's."""
    x = rearrange(x, "(b f) n c -> b f n c", f=num_frames)
    first = x[:, :1] if first is None else first[:, None]
    first = first.expand(-1, num_frames, -1, -1)
    prev = x[:, previous_frame_index(num_frames, x.device)]
    return rearrange(torch.cat([first, prev], dim=2), "b f n c -> (b f) n c")


class SparseCausalAttnProcessor:
    """Self-attention where frame ``i`` attends to frames ``0`` and ``i-1`` (Tune-A-Video ST-Attn); in a context
    window, frame 0 is the whole clip's (``anchor``) and the window's first frame is its own previous frame."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1, frame_size: tuple[int, int] | None = None, anchor=None):
        """``hidden_states``: ``[(b f), n, c]`` -> ``[(b f), n, c]``."""
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(hidden_states), attn.to_v(hidden_states)
        k0, v0 = anchored_kv(attn, k, v, num_frames, anchor)
        return attend(attn, q, sparse_causal_kv(k, num_frames, k0), sparse_causal_kv(v, num_frames, v0))


def first_frame_kv(x: torch.Tensor, num_frames: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Keys or values of each clip's first frame for every frame: ``[(b f), n, c] -> [(b f), n, c]``. ``first``
    ``[b, n, c]``: the anchor frame's, instead of the clip's own first frame's."""
    x = rearrange(x, "(b f) n c -> b f n c", f=num_frames)
    first = x[:, :1] if first is None else first[:, None]
    return rearrange(first.expand(-1, num_frames, -1, -1), "b f n c -> (b f) n c")


class FirstFrameAttnProcessor:
    """Self-attention where every frame attends to frame 0 of its clip (Video-P2P's ``FrameAttention``); in a
    context window, frame 0 of the whole clip (``anchor``)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1, frame_size: tuple[int, int] | None = None, anchor=None):
        """``hidden_states``: ``[(b f), n, c]`` -> ``[(b f), n, c]``."""
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(hidden_states), attn.to_v(hidden_states)
        k0, v0 = anchored_kv(attn, k, v, num_frames, anchor)
        return attend(attn, q, first_frame_kv(k, num_frames, k0), first_frame_kv(v, num_frames, v0))


class TemporalAttnProcessor:
    """Attention across frames at each spatial position (Tune-A-Video T-Attn)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[(b f), d, c]`` (``d`` spatial tokens) -> same shape."""
        d = hidden_states.shape[1]
        x = rearrange(hidden_states, "(b f) d c -> (b d) f c", f=num_frames)
        out = attend(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x))
        return rearrange(out, "(b d) f c -> (b f) d c", d=d)


class PlainAttnProcessor:
    """Ordinary (cross- or self-) attention with SDPA; accepts and ignores ``num_frames``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[B, n, c]``, ``encoder_hidden_states``: ``[B, m, d]`` or None -> ``[B, n, c]``."""
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context))


def other_frames_index(num_frames: int, device=None) -> torch.Tensor:
    """``[f, f-1]``: for each frame, the indices of every other frame in order."""
    idx = torch.arange(num_frames, device=device)
    return torch.stack([torch.cat([idx[:i], idx[i + 1:]]) for i in range(num_frames)]) if num_frames > 1 else \
        idx.new_zeros(1, 0)


def coarse_tokens(x: torch.Tensor, num_frames: int, frame_size: tuple[int, int], pool: int) -> torch.Tensor:
    """Average-pool each frame's token grid: ``[(b f), h*w, c] -> [b, f, (h/p)*(w/p), c]``.

    Pooling commutes with the (affine) key/value projections, so pooling projected keys equals projecting pooled
    patches."""
    h, w = frame_size
    grid = rearrange(x, "(b f) (h w) c -> (b f) c h w", f=num_frames, h=h, w=w)
    pooled = F.avg_pool2d(grid, pool)
    return rearrange(pooled, "(b f) c h w -> b f (h w) c", f=num_frames)


def fine_coarse_kv(x: torch.Tensor, num_frames: int, frame_size: tuple[int, int], pool: int) -> torch.Tensor:
    """Keys or values of FFAM: own frame's fine tokens, then every other frame's pooled tokens.

    ``[(b f), n, c] -> [(b f), n + (f-1) n/p^2, c]``."""
    if num_frames == 1:
        return x
    coarse = coarse_tokens(x, num_frames, frame_size, pool)  # [b, f, m, c]
    others = coarse[:, other_frames_index(num_frames, x.device)]  # [b, f, f-1, m, c]
    others = rearrange(others, "b f g m c -> (b f) (g m) c")
    return torch.cat([x, others], dim=1)


class FineCoarseAttnProcessor:
    """EI² FFAM (Sec. 3, Fig. 2(c)): each patch attends to the fine patches of its own frame and to the
    ``pool_size x pool_size`` average-pooled patches of all other frames. On one frame it is plain self-attention.

    ``frame_size`` (the token grid ``(h, w)`` of this UNet level) is passed by the inflated transformer block.
    """

    def __init__(self, pool_size: int = 4):
        if int(pool_size) != pool_size or pool_size < 1:
            raise ValueError(f"fine_coarse_pool={pool_size!r} must be an integer >= 1")
        self.pool_size = int(pool_size)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1, frame_size: tuple[int, int] | None = None, anchor=None):
        """``hidden_states``: ``[(b f), h*w, c]`` -> ``[(b f), h*w, c]``. ``anchor`` (context windows) is not read:
        FFAM singles out no frame; its coarse tokens are those of the window's other frames."""
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if num_frames > 1:
            if frame_size is None:
                raise ValueError("fine-coarse attention needs the frame's token grid (frame_size)")
            h, w = frame_size
            p = self.pool_size
            if h % p or w % p:
                raise ValueError(f"fine_coarse_pool={p} does not divide the {h}x{w} feature grid of one UNet level; "
                                 f"choose a pool size that divides every level (latent size / 2^level), e.g. a "
                                 f"power of two no larger than the smallest level")
            k = fine_coarse_kv(k, num_frames, frame_size, p)
            v = fine_coarse_kv(v, num_frames, frame_size, p)
        return attend(attn, q, k, v)


class StamTemporalAttnProcessor:
    """The attention of EI²'s STAM (Sec. 3): temporal attention over the frames at each position whose mapping is
    normalised so that it does not shrink or inflate the variance of what it mixes.

    Softmax attention averages values: for uncorrelated values of variance ``s^2`` the output of row ``i`` has variance
    ``s^2 * sum_j A_ij^2 <= s^2``, a variance shift that depends on how peaked the attention is. Dividing each row by
    its L2 norm, ``A_ij / ||A_i||_2``, keeps the output variance ``s^2`` whatever the attention (our reading of the
    paper's "normalized mapping ... constraining the variance shift"; the paper's method text was not available to
    us, see modules/ei2.py). Frame-to-frame maps are ``f x f``, so they are materialised.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states``: ``[(b f), d, c]`` (``d`` spatial tokens) -> same shape."""
        d = hidden_states.shape[1]
        x = rearrange(hidden_states, "(b f) d c -> (b d) f c", f=num_frames)
        h = attn.heads
        q, k, v = (split_heads(p(x), h) for p in (attn.to_q, attn.to_k, attn.to_v))
        dtype = q.dtype
        if attn.upcast_attention and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        mapping = probs / probs.norm(dim=-1, keepdim=True)
        out = output_projection(attn, merge_heads(mapping @ v).to(dtype))
        return rearrange(out, "(b d) f c -> (b f) d c", d=d)


# --- FFAM token grids (EI², Sec. 3) -------------------------------------------------------------------------------

def level_grid(latent_size: tuple[int, int], tokens: int) -> tuple[int, int] | None:
    """The ``(h, w)`` token grid of a UNet level with ``tokens`` tokens, for a latent of ``latent_size``, or None when
    no level of that latent has that many tokens. SD UNets halve the grid per level, rounding up (stride-2 conv with
    padding 1)."""
    h, w = latent_size
    if h < 1 or w < 1 or tokens < 1:
        return None
    step = max(1, round(math.sqrt(h * w / tokens)))
    grid = (-(-h // step), -(-w // step))
    return grid if grid[0] * grid[1] == tokens else None


def check_pool_size(pool: int, latent_size: tuple[int, int], levels: int, name: str = "fine_coarse_pool") -> None:
    """FFAM's pool must divide the token grid of each of the ``levels`` attention levels of a latent.

    ``latent_size``: ``(h, w)`` of the latent (pixels / 8). Raises ValueError naming ``name``."""
    h, w = latent_size
    for level in range(levels):
        if h % pool or w % pool:
            raise ValueError(f"{name}={pool} does not divide the {h}x{w} feature grid at UNet level {level} of a "
                             f"{latent_size[0]}x{latent_size[1]} latent; use a pool size dividing every level "
                             f"(e.g. 2 or 4 for 512x512 frames) or a frame size that is a multiple of "
                             f"{8 * pool * 2 ** (levels - 1)} pixels")
        h, w = -(-h // 2), -(-w // 2)


def attention_levels(unet) -> int:
    """How many resolutions of ``unet`` carry transformer blocks (the levels FFAM runs at)."""
    cfg = unet.config
    down = sum(1 for t in cfg.down_block_types if "CrossAttn" in t)
    return down + 1 if down < len(cfg.down_block_types) else down
