"""Video-P2P editing: two-branch DDIM sampling with cross-attention control.

Video-P2P (Liu et al., 2023, Sec. 3.4, its ``run_videop2p.py``) on prompt-to-prompt (Hertz et al., ICLR 2023,
Sec. 3.2): the source and the edited prompt are sampled side by side from the same inverted noise; the edit branch
takes attention from the source branch so that what the prompt change does not name stays put.

- Batch per step: ``[uncond_src, uncond_edit, cond_src, cond_edit]``. The source branch's unconditional embedding is
  the null-text embedding of that step (the edit branch keeps the plain one: Video-P2P's decoupled guidance); in
  ``fast`` mode the source branch is sampled without guidance, an exact DDIM reversal of the inversion.
- Cross-attention (``attn2``), conditional half only: for the first ``int(c (S + 1))`` steps the edit branch's maps
  become ``replace(src, edit) * w`` (word swap: ``src @ M``; refinement: aligned source columns where ``alpha = 1``),
  times the reweighting vector ``w``; afterwards they are the edit branch's own.
- "Self" attention: in the reference the controlled self-attention is the *temporal* attention ``attn_temp`` (its
  spatial ``FrameAttention`` is not hooked); for the first ``int(S s)`` steps the edit branch's frame-to-frame maps
  are the source branch's.
- Local blend, from step ``int(0.2 S)``: the cross-attention maps of the blend words at 1/4 of the latent resolution
  (the reference's 16x16 layers at 512 px: ``down_blocks.2`` and ``up_blocks.1``), summed over the steps so far,
  averaged over heads and layers per frame, 3x3 max-pooled, upsampled (nearest) to the latent, divided by their
  maximum and thresholded (0.3) give a mask per branch and frame; the edit branch's mask also covers the source's;
  the edited latent keeps the source latent outside it: ``x = x_src + mask (x - x_src)``.

Generalised from the reference: any frame count and any latent size divisible by 8 (the reference hard-codes 8 heads
and 16x16 maps), per-row softmax (the reference subtracts one maximum over the whole tensor, which can underflow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from ...defaults import VP2P
from ...networks.inflate import InflatedUNet, VideoTransformerBlock
from ...sampling.ddim import ddim_grid, ddim_loop
from ...sampling.guidance import two_branch_guided
from ...sampling.schedule import NoiseSchedule
from .prompt_align import MAX_TOKENS, refinement_mapper, replacement_mapper, token_weights, word_mask

Callback = Callable[[int, int, dict], None]
BLEND_BLOCKS = ("down_blocks.2.", "up_blocks.1.")  # cross-attention at 1/4 of the latent resolution (SD1.x/2.x)


@dataclass(frozen=True)
class EditControl:
    """What to do with attention; token-level tensors come from :mod:`.prompt_align`.

    Attributes:
        word_swap: ``mapper`` is a ``[L, L]`` matrix (swap) or a ``[L]`` index vector with ``alphas`` (refine).
        reweight: ``[L]`` multipliers of the edit prompt's tokens (ones: none).
        blend_src, blend_edit: ``[L]`` 0/1 token masks of the blend words, or None for no local blend.
    """

    word_swap: bool
    mapper: torch.Tensor
    alphas: torch.Tensor | None = None
    reweight: torch.Tensor | None = None
    blend_src: torch.Tensor | None = None
    blend_edit: torch.Tensor | None = None
    cross_replace_steps: float = VP2P.cross_replace_steps  # run_videop2p.py default
    self_replace_steps: float = VP2P.self_replace_steps
    blend_threshold: float = VP2P.blend_threshold  # mask_th
    start_blend: float = 0.2


@dataclass
class _State:
    step: int = 0
    store: dict[str, torch.Tensor] = field(default_factory=dict)  # blend-layer cross maps, summed over steps


class AttentionController:
    """Shared by the controlled processors of one sampling run; edits the conditional half of the batch."""

    def __init__(self, control: EditControl, steps: int):
        self.control = control
        self.state = _State()
        self.cross_until = int(control.cross_replace_steps * (steps + 1))
        self.self_until = int(control.self_replace_steps * steps)
        self.blend_from = int(control.start_blend * steps)

    def cross(self, probs: torch.Tensor, name: str, blend_layer: bool) -> torch.Tensor:
        """``probs`` ``[4, f, h, n, L]`` (batch = uncond src/edit, cond src/edit) -> edited."""
        c = self.control
        if self.state.step < self.cross_until:
            src, edit = probs[2], probs[3]
            if c.word_swap:
                new = torch.einsum("fhnl,lm->fhnm", src, c.mapper.to(src))
            else:
                a = c.alphas.to(src)
                new = src[..., c.mapper.to(src.device)] * a + edit * (1 - a)
            if c.reweight is not None:
                new = new * c.reweight.to(src)
            probs = torch.cat([probs[:3], new[None]])
        if blend_layer:  # kept for local blend and for the attention-map view
            cond = probs[2:].detach()
            self.state.store[name] = self.state.store[name] + cond if name in self.state.store else cond.clone()
        return probs

    def temporal(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` ``[4, d, h, f, f]`` (frame-to-frame maps per spatial position) -> edited."""
        if self.state.step < self.self_until:
            probs = torch.cat([probs[:3], probs[2:3]])
        return probs

    def blend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Local blend of ``x`` ``[2, c, f, h, w]`` after a step; returns (x, mask ``[2, 1, f, h, w]`` or None)."""
        c = self.control
        if c.blend_src is None or self.state.step < self.blend_from or not self.state.store:
            return x, None
        _, _, f, h, w = x.shape
        m = self.word_maps(torch.stack([c.blend_src, c.blend_edit]), h)  # [2, f, h/4, w/4]
        m = F.max_pool2d(m, kernel_size=3, stride=1, padding=1)
        m = F.interpolate(m, size=(h, w))
        m = m / m.amax(dim=(2, 3), keepdim=True)
        mask = m > c.blend_threshold
        mask = (mask[:1] | mask).float()[:, None]  # [2, 1, f, h, w]
        return x[:1] + mask * (x - x[:1]), mask


    def word_maps(self, words: torch.Tensor, latent_height: int) -> torch.Tensor:
        """Cross-attention of token masks ``words`` ``[2, L]`` (one per branch), summed over the steps so far and
        averaged over the heads of every layer at 1/4 of the latent resolution: ``[2, f, h/4, w/4]``."""
        maps = [rearrange(m, "b f k (y x) l -> b f k y x l", y=latent_height // 4) for m in self.state.store.values()]
        maps = torch.cat(maps, dim=2)  # heads of every layer
        return (maps * words.to(maps)[:, None, None, None, None, :]).sum(-1).mean(2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def _probs(attn, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention probabilities ``[B, h, n, m]`` (per-row softmax; fp32 when the module asks to upcast)."""
    q, k = _heads(q, attn.heads), _heads(k, attn.heads)
    if attn.upcast_attention:
        q, k = q.float(), k.float()
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)


def _out(attn, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = probs.to(v.dtype) @ _heads(v, attn.heads)
    return attn.to_out[1](attn.to_out[0](rearrange(out, "b h n d -> b n (h d)")))


class ControlledCrossAttnProcessor:
    """Cross-attention whose probabilities pass through an :class:`AttentionController` (``attn2``)."""

    def __init__(self, controller: AttentionController, name: str, blend_layer: bool):
        self.controller, self.name, self.blend_layer = controller, name, blend_layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states`` ``[(b f), n, c]``, ``encoder_hidden_states`` ``[(b f), L, d]`` with ``b = 4``."""
        probs = _probs(attn, attn.to_q(hidden_states), attn.to_k(encoder_hidden_states))
        probs = rearrange(probs, "(b f) h n l -> b f h n l", f=num_frames)
        probs = self.controller.cross(probs, self.name, self.blend_layer)
        probs = rearrange(probs, "b f h n l -> (b f) h n l")
        return _out(attn, probs, attn.to_v(encoder_hidden_states))


class ControlledTemporalAttnProcessor:
    """Temporal attention whose frame-to-frame maps pass through an :class:`AttentionController` (``attn_temp``)."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states`` ``[(b f), d, c]`` with ``b = 4`` -> same shape."""
        d = hidden_states.shape[1]
        x = rearrange(hidden_states, "(b f) d c -> (b d) f c", f=num_frames)
        probs = rearrange(_probs(attn, attn.to_q(x), attn.to_k(x)), "(b d) h f g -> b d h f g", d=d)
        probs = rearrange(self.controller.temporal(probs), "b d h f g -> (b d) h f g")
        return rearrange(_out(attn, probs, attn.to_v(x)), "(b d) f c -> (b f) d c", d=d)


def controlled_unet(unet: InflatedUNet, controller: AttentionController) -> InflatedUNet:
    """A clone of ``unet`` (weights shared) whose ``attn2`` and ``attn_temp`` report to ``controller``."""
    if getattr(unet, "temporal", "tune-a-video") != "tune-a-video":
        raise ValueError(f"Video-P2P controls Tune-A-Video's temporal attention; this VIDEO_UNET uses "
                         f"{unet.temporal!r} temporal layers (inflate with temporal_layer tune-a-video)")
    video = unet.clone()
    for name, module in video.named_modules():
        if isinstance(module, VideoTransformerBlock):
            blend = name.startswith(BLEND_BLOCKS)
            module.attn2.set_processor(ControlledCrossAttnProcessor(controller, name, blend))
            module.attn_temp.set_processor(ControlledTemporalAttnProcessor(controller))
    return video


@torch.no_grad()
def p2p_sample(unet: InflatedUNet, schedule: NoiseSchedule, x_t: torch.Tensor, cond_src: torch.Tensor,
               cond_edit: torch.Tensor, uncond: torch.Tensor, control: EditControl, steps: int = 50,
               guidance: float = 7.5, null_text: torch.Tensor | None = None, fast: bool = False,
               callback: Callback | None = None) -> tuple[torch.Tensor, list[torch.Tensor], AttentionController]:
    """Sample source and edit branches from ``x_t`` ``[1, c, f, h, w]`` with attention control.

    Args:
        cond_src, cond_edit, uncond: ``[1, L, d]`` (L = 77: token positions index the maps).
        null_text: ``[steps, L, d]`` per-step unconditional embeddings of the source branch (from null-text
            inversion), or None to use ``uncond``.
        fast: no guidance on the source branch (Video-P2P ``--fast``).
    Returns ``(latents [2, c, f, h, w] (source, edit), local-blend masks of the steps where it acted, the controller
    (its :meth:`~AttentionController.word_maps` shows the accumulated cross-attention))``.
    """
    _, _, f, h, w = x_t.shape
    if h % 8 or w % 8:
        raise ValueError(f"latent size {h}x{w} must be divisible by 8 (video size a multiple of 64)")
    lengths = {t.shape[1] for t in (cond_src, cond_edit, uncond)}
    if len(lengths) != 1:
        raise ValueError(f"prompt-to-prompt needs one token length for every prompt, got {sorted(lengths)}")
    if null_text is not None and null_text.shape[0] != steps:
        raise ValueError(f"null_text has {null_text.shape[0]} steps but sampling uses {steps}")
    controller = AttentionController(control, steps)
    model = controlled_unet(unet, controller)
    dev, dtype = model.device, model.dtype

    def contexts(i: int) -> torch.Tensor:
        u_src = null_text[i][None] if null_text is not None else uncond
        return torch.cat([u_src, uncond, cond_src, cond_edit]).to(dev, dtype)

    guide = two_branch_guided(lambda x, t, c: model(x.to(dtype), t, c), contexts, guidance, fast)

    def step_model(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        controller.state.step = i  # the attention processors and the local blend key on the step
        return guide(x, t, i)

    masks = []

    def local_blend(i: int, x: torch.Tensor) -> torch.Tensor:
        x, mask = controller.blend(x)
        if mask is not None:
            masks.append(mask)
        return x

    x = x_t.float().expand(2, -1, -1, -1, -1).to(dev)
    x = ddim_loop(step_model, schedule, x, ddim_grid(schedule, steps), callback, after_step=local_blend)
    return x, masks, controller


def edit_control(source: str, edit: str, tokenize, decode, word_swap: bool, blend: tuple[str, str] | None = None,
                 reweight: dict[str, float] | None = None, **settings) -> EditControl:
    """An :class:`EditControl` from the two prompts (plain text, at most 75 tokens each) and word choices, with
    clear errors naming what is wrong. ``settings``: the step fractions and thresholds of :class:`EditControl`."""
    for name, prompt in (("source prompt", source), ("edit prompt", edit)):
        n = len(tokenize(prompt))
        if n > MAX_TOKENS:
            raise ValueError(f"{name} has {n - 2} tokens; prompt-to-prompt works within one 77-token window "
                             f"(at most 75 tokens)")
    if word_swap:
        mapper, alphas = replacement_mapper(source, edit, tokenize, decode), None
    else:
        mapper, alphas = refinement_mapper(source, edit, tokenize)
    weights = token_weights(edit, reweight, tokenize, decode) if reweight else None
    blend_src = blend_edit = None
    if blend is not None:
        blend_src = word_mask(source, blend[0], tokenize, decode, role="blend (source)")
        blend_edit = word_mask(edit, blend[1], tokenize, decode, role="blend (edit)")
    return EditControl(word_swap=word_swap, mapper=mapper, alphas=alphas, reweight=weights, blend_src=blend_src,
                       blend_edit=blend_edit, **settings)


def attention_image(controller: AttentionController, control: EditControl, latent_height: int) -> torch.Tensor:
    """The accumulated cross-attention of the blend words (source row, edit row) and the reweighted words (edit
    row) over the frames, as a ComfyUI IMAGE ``[1, H, W, 3]`` (each map scaled to 0..1, 4x nearest upsampled,
    2-pixel gaps). A blank 8x8 image when no word was chosen."""
    rows = []
    if control.blend_src is not None:
        rows += [(0, control.blend_src), (1, control.blend_edit)]
    if control.reweight is not None and bool((control.reweight != 1).any()):
        rows.append((1, (control.reweight != 1).float()))
    if not rows or not controller.state.store:
        return torch.zeros(1, 8, 8, 3)
    tiles = []
    for branch, words in rows:
        m = controller.word_maps(torch.stack([words, words]), latent_height)[branch]  # [f, y, x]
        m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        m = F.interpolate(m[:, None], scale_factor=4, mode="nearest")[:, 0]
        tiles.append(torch.cat([F.pad(frame, (0, 2, 0, 2)) for frame in m], dim=1))
    grid = torch.cat(tiles, dim=0).clamp(0, 1)
    return grid[None, :, :, None].expand(-1, -1, -1, 3).float().cpu()
