"""Video-P2P attention control (Liu et al., 2023, Sec. 3.3; prompt-to-prompt, Hertz et al., 2022): the controller
and the processors through which an inflated UNet's cross-attention (``attn2``) and temporal attention
(``attn_temp``) maps pass during two-branch sampling (:func:`~.edit.p2p_sample`).

What is edited, and when, is described in :mod:`.edit`. The maps are materialised only on the steps and layers whose
maps the controller edits or stores (cross: the first ``cross_until`` steps and the local-blend layers; temporal:
the first ``self_until`` steps); every other call runs SDPA (:func:`~...networks.attention.attend`).

With context windows (:mod:`~...sampling.windows`) the processors see one window's frames at a time: the edits are
per frame (cross) or within the window (temporal), and the maps kept for the local blend go to their frames of the
whole clip, weighted by the window's share of each frame's fused prediction (:meth:`AttentionController.enter_window`),
so the blend mask stays per frame of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from ...defaults import VP2P
from ...networks.attention import attend, attend_probs, attention_probs
from ...networks.base import NetworkBase
from ...networks.inflate import InflatedUNet, VideoTransformerBlock
from ...sampling.windows import Window

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
        self.window: Window | None = None  # the context window being run (None: the whole clip)

    def enter_window(self, window: Window) -> None:
        """The processors are about to see ``window``'s frames (the ``on_window`` hook of a windowed model)."""
        self.window = window

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
            self.keep(name, probs[2:].detach())
        return probs

    def keep(self, name: str, cond: torch.Tensor) -> None:
        """Add one step's conditional maps ``[2, f, h, n, L]`` of layer ``name`` to the store, per frame of the clip:
        a window's maps go to its frames, times its share of them (the shares of a frame sum to 1 per step)."""
        store, w = self.state.store, self.window
        if w is None or w.whole:
            store[name] = store[name] + cond if name in store else cond.clone()
            return
        if name not in store:
            store[name] = cond.new_zeros(cond.shape[0], w.clip_frames, *cond.shape[2:])
        idx = torch.tensor(w.frames, device=cond.device)
        store[name] = store[name].index_add(1, idx, cond * w.share.to(cond).view(1, -1, 1, 1, 1))

    def edits_cross(self, blend_layer: bool) -> bool:
        """Whether this step's cross-attention maps are edited (replace/refine/reweight) or stored (blend layers):
        only then are they materialised; otherwise the processor runs SDPA."""
        return blend_layer or self.state.step < self.cross_until

    def edits_temporal(self) -> bool:
        """Whether this step's frame-to-frame maps are replaced (else the processor runs SDPA)."""
        return self.state.step < self.self_until

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


class ControlledCrossAttnProcessor:
    """Cross-attention whose probabilities pass through an :class:`AttentionController` (``attn2``)."""

    def __init__(self, controller: AttentionController, name: str, blend_layer: bool):
        self.controller, self.name, self.blend_layer = controller, name, blend_layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states`` ``[(b f), n, c]``, ``encoder_hidden_states`` ``[(b f), L, d]`` with ``b = 4``."""
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        if not self.controller.edits_cross(self.blend_layer):
            return attend(attn, q, k, v)
        probs = rearrange(attention_probs(attn, q, k), "(b f) h n l -> b f h n l", f=num_frames)
        probs = self.controller.cross(probs, self.name, self.blend_layer)
        return attend_probs(attn, rearrange(probs, "b f h n l -> (b f) h n l"), v)


class ControlledTemporalAttnProcessor:
    """Temporal attention whose frame-to-frame maps pass through an :class:`AttentionController` (``attn_temp``)."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_frames: int = 1):
        """``hidden_states`` ``[(b f), d, c]`` with ``b = 4`` -> same shape."""
        d = hidden_states.shape[1]
        x = rearrange(hidden_states, "(b f) d c -> (b d) f c", f=num_frames)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        if self.controller.edits_temporal():
            probs = rearrange(attention_probs(attn, q, k), "(b d) h f g -> b d h f g", d=d)
            out = attend_probs(attn, rearrange(self.controller.temporal(probs), "b d h f g -> (b d) h f g"), v)
        else:
            out = attend(attn, q, k, v)
        return rearrange(out, "(b d) f c -> (b f) d c", d=d)


def controlled_unet(unet: InflatedUNet, controller: AttentionController) -> InflatedUNet:
    """A clone of ``unet`` (weights shared) whose ``attn2`` and ``attn_temp`` report to ``controller``."""
    if unet.base is not NetworkBase.INFLATED:
        raise ValueError("Video-P2P edits an inflated UNet's cross- and temporal attention; this VIDEO_UNET is the "
                         "AnimateDiff base (build it with InflateUNetTemporal)")
    if unet.temporal != "tune-a-video":
        raise ValueError(f"Video-P2P controls Tune-A-Video's temporal attention; this VIDEO_UNET uses "
                         f"{unet.temporal!r} temporal layers (inflate with temporal_layer tune-a-video)")
    video = unet.clone()
    for name, module in video.named_modules():
        if isinstance(module, VideoTransformerBlock):
            blend = name.startswith(BLEND_BLOCKS)
            module.attn2.set_processor(ControlledCrossAttnProcessor(controller, name, blend))
            module.attn_temp.set_processor(ControlledTemporalAttnProcessor(controller))
    return video



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
