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

import torch

from ...defaults import VP2P
from ...networks.inflate import InflatedUNet
from ...sampling.ddim import ddim_grid, ddim_loop
from ...sampling.guidance import two_branch_guided
from ...sampling.schedule import NoiseSchedule
from ...sampling.windows import ContextWindows, Window, WindowHook, windowed
from .control import AttentionController, EditControl, controlled_unet
from .prompt_align import MAX_TOKENS, refinement_mapper, replacement_mapper, token_weights, word_mask

Callback = Callable[[int, int, dict], None]


@torch.no_grad()
def p2p_sample(unet: InflatedUNet, schedule: NoiseSchedule, x_t: torch.Tensor, cond_src: torch.Tensor,
               cond_edit: torch.Tensor, uncond: torch.Tensor, control: EditControl, steps: int = 50,
               cfg: float = VP2P.guidance_scale, null_text: torch.Tensor | None = None, fast: bool = False,
               callback: Callback | None = None, windows: ContextWindows | None = None,
               on_window: WindowHook | None = None) -> tuple[torch.Tensor, list[torch.Tensor], AttentionController]:
    """Sample source and edit branches from ``x_t`` ``[1, c, f, h, w]`` with attention control.

    Args:
        cond_src, cond_edit, uncond: ``[1, L, d]`` (L = 77: token positions index the maps).
        null_text: ``[steps, L, d]`` per-step unconditional embeddings of the source branch (from null-text
            inversion), or None to use ``uncond``.
        fast: no guidance on the source branch (Video-P2P ``--fast``).
        windows: context windows for long clips (the ones the null-text inversion used), ``on_window`` before each
            (:func:`~...sampling.windows.windowed`); the controller keeps its blend maps per frame of the clip.
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

    def window_hook(window: Window) -> None:
        controller.enter_window(window)
        if on_window is not None:
            on_window(window)

    fn = windowed(lambda x, t, c: model(x.to(dtype), t, c), windows, model.max_frames, window_hook)
    guide = two_branch_guided(fn, contexts, cfg, fast)

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
