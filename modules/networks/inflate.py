"""Network inflation: a 2D text-to-image UNet becomes a space-time video UNet.

Tune-A-Video (Wu et al., ICCV 2023), Sec. 4.1, as implemented by its ``UNet3DConditionModel``:

- 2D convolutions run per frame (``(b f) c h w``), as the reference's ``InflatedConv3d`` does.
- Self-attention becomes sparse-causal (:class:`~.attention.SparseCausalAttnProcessor`).
- Every transformer block gains ``norm_temp`` + ``attn_temp`` after its feed-forward: temporal attention over
  frames at each spatial position, output projection zero-initialised so the video model starts as the image model.
- The reference applies ``nn.GroupNorm`` to the 5D video tensor in ResNet blocks and in ``conv_norm_out``, so their
  statistics are pooled over *all frames* of a clip. The transformers' GroupNorm runs per frame. A frames-as-batch
  2D UNet would normalise every frame alone; :class:`FrameGroupNorm` reproduces the reference instead.

How the layers learn the clip length: :meth:`InflatedUNet.forward` passes ``num_frames``, the latent size and the
temporal on/off flag as diffusers' ``cross_attention_kwargs`` (:func:`frame_kwargs`), which ``UNet2DConditionModel``
hands to every transformer block (as diffusers hands ``num_frames`` to ``UNetMotionModel``'s blocks); the blocks pass
``num_frames``/``frame_size`` (and, inside a context window, the clip's frame-0 anchor: :mod:`~..sampling.anchor`) to
their attention processors and norms as arguments. Only the ResNets' GroupNorms,
which diffusers calls as ``norm(x)``, read it from a :class:`~.norms.FrameScope` that ``forward`` opens and closes.

The 2D weights are shared with the input UNet, never copied and never modified: :func:`share_clone` builds a new
module tree over the same ``Parameter`` objects. Tuning later gives the trainable tensors their own copies
(:func:`own_parameter`). ``InflatedUNet.state_dict()`` keys equal the reference's, so Tune-A-Video checkpoints load
with ``strict=True``.
"""

from __future__ import annotations

import logging

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange, repeat
from torch import nn

from ..convert.unet import UnsupportedModelError
from ..sampling.anchor import FrameAnchor, current_anchor
from .attention import (
    FineCoarseAttnProcessor,
    FirstFrameAttnProcessor,
    PlainAttnProcessor,
    SparseCausalAttnProcessor,
    StamTemporalAttnProcessor,
    TemporalAttnProcessor,
    level_grid,
)
from .base import NetworkBase, VideoNetwork, retarget, share_clone
from .norms import FrameGroupNorm, FrameScope, InstanceCentering, MixedLayerNorm, checkpoint_in_frame_scope

logger = logging.getLogger(__name__)

TEMPORAL_MARKER = "_temp."
#: Seed of the temporal layers' initialisation. The reference seeds the global RNG with its config's ``seed`` (33)
#: before building the model (train_tuneavideo.py), so its init is fixed per run too; we use the same number.
TEMPORAL_INIT_SEED = 33

#: Spatial self-attention variants (``attn1``): which frames give each frame's keys and values.
ATTENTION_VARIANTS = {
    "tune-a-video": SparseCausalAttnProcessor,  # first + previous frame (Tune-A-Video, Sec. 4.1)
    "video-p2p": FirstFrameAttnProcessor,  # first frame only (Video-P2P's FrameAttention)
    "ei2-ffam": FineCoarseAttnProcessor,  # own frame fine + other frames pooled (EI² FFAM); option pool_size
}
#: The options each attention variant takes (keyword arguments of its processor).
ATTENTION_OPTIONS = {"tune-a-video": (), "video-p2p": (), "ei2-ffam": ("pool_size",)}


def variant_options(attention: str, **values) -> dict:
    """The subset of ``values`` that attention variant ``attention`` takes (a UI offers every option; each variant
    keeps its own)."""
    _check_variant(attention)
    return {k: v for k, v in values.items() if k in ATTENTION_OPTIONS[attention]}

#: Temporal layers (``norm_temp`` + ``attn_temp`` processor): Tune-A-Video's LayerNorm + softmax attention, or EI²'s
#: STAM (Instance Centering, no parameters, + normalised mapping; see :mod:`.ei2`).
TEMPORAL_VARIANTS = ("tune-a-video", "ei2-stam")


def frame_kwargs(num_frames: int, latent_size: tuple[int, int] | None = None, temporal: bool = True,
                 anchor: FrameAnchor | None = None) -> dict:
    """The ``cross_attention_kwargs`` that tell :class:`VideoTransformerBlock` what it runs on: ``num_frames`` per
    clip, the latent's ``(h, w)`` (FFAM's token grids), whether the temporal layers run (False: frames are
    independent images, Dreamix) and, in a context window, the whole clip's frame-0 ``anchor`` for ``attn1``."""
    kwargs = {"num_frames": int(num_frames), "latent_size": latent_size, "temporal": bool(temporal)}
    if anchor is not None:
        kwargs["anchor"] = anchor
    return kwargs


def attention_processor(attention: str, options: dict | None = None):
    """A new ``attn1`` processor for variant ``attention`` with its ``options`` (e.g. ``{"pool_size": 4}``)."""
    _check_variant(attention)
    try:
        return ATTENTION_VARIANTS[attention](**(options or {}))
    except TypeError as e:
        raise ValueError(f"attention {attention!r} does not take options {sorted(options or {})}") from e


class VideoTransformerBlock(nn.Module):
    """Tune-A-Video's transformer block: ST-Attn, cross-attention, feed-forward, then T-Attn.

    Holds the 2D block's submodules under the same names (``norm1``, ``attn1``, ``norm2``, ``attn2``, ``norm3``,
    ``ff``) plus ``norm_temp`` and ``attn_temp``. Token layout: ``(b f) n c``.
    """

    def __init__(self, block: BasicTransformerBlock, attention: str = "tune-a-video",
                 attention_options: dict | None = None, temporal: str = "tune-a-video"):
        super().__init__()
        norms = (block.norm1, block.norm2, block.norm3)
        if (block.norm_type != "layer_norm" or block.only_cross_attention or block.pos_embed is not None
                or not all(type(n) is nn.LayerNorm for n in norms)):
            raise UnsupportedModelError(
                f"transformer block with norm_type={block.norm_type!r}, only_cross_attention="
                f"{block.only_cross_attention}: only SD1.x/SD2.x blocks can be inflated")
        self.norm1, self.attn1 = MixedLayerNorm(block.norm1), block.attn1
        self.norm2, self.attn2 = MixedLayerNorm(block.norm2), block.attn2
        self.norm3, self.ff = MixedLayerNorm(block.norm3), block.ff
        self.attn1.set_processor(attention_processor(attention, attention_options))
        if self.attn2 is not None:
            self.attn2.set_processor(PlainAttnProcessor())
        dim, a1 = block.norm1.normalized_shape[0], block.attn1
        param = a1.to_q.weight
        self.attn_temp = Attention(
            query_dim=dim, heads=a1.heads, dim_head=dim // a1.heads, bias=a1.to_q.bias is not None,
            upcast_attention=a1.upcast_attention, processor=TemporalAttnProcessor(),
        ).to(device=param.device, dtype=param.dtype)
        # Reference zeroes only to_out's weight; zeroing the bias too makes the fresh model exactly the 2D one.
        nn.init.zeros_(self.attn_temp.to_out[0].weight)
        nn.init.zeros_(self.attn_temp.to_out[0].bias)
        self.norm_temp = MixedLayerNorm(nn.LayerNorm(dim).to(device=param.device, dtype=param.dtype))
        if temporal != "tune-a-video":
            self.set_temporal(temporal)

    def set_temporal(self, temporal: str) -> None:
        """Make the temporal layer Tune-A-Video's (LayerNorm + softmax) or EI²'s STAM (Instance Centering +
        normalised mapping). ``attn_temp``'s weights are kept; a new LayerNorm starts at identity (ones, zeros)."""
        if temporal == "ei2-stam":
            self.norm_temp = InstanceCentering()
            self.attn_temp.set_processor(StamTemporalAttnProcessor())
        elif temporal == "tune-a-video":
            if not isinstance(self.norm_temp, nn.LayerNorm):
                w = self.attn_temp.to_q.weight
                fresh = nn.LayerNorm(w.shape[1]).to(device=w.device, dtype=w.dtype)
                for p in fresh.parameters():
                    p.requires_grad_(False)
                self.norm_temp = MixedLayerNorm(fresh)
            self.attn_temp.set_processor(TemporalAttnProcessor())
        else:
            raise ValueError(f"temporal={temporal!r}; expected one of {list(TEMPORAL_VARIANTS)}")

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        """``hidden_states``: ``[(b f), n, c]``; ``encoder_hidden_states``: ``[(b f), m, d]``;
        ``cross_attention_kwargs``: :func:`frame_kwargs` (absent: one frame, the image model)."""
        kw = cross_attention_kwargs or {}
        f, latent_size = int(kw.get("num_frames", 1)), kw.get("latent_size")
        grid = level_grid(latent_size, hidden_states.shape[1]) if f > 1 and latent_size else None
        anchor = {"anchor": kw["anchor"]} if kw.get("anchor") is not None else {}  # context windows only
        h = self.attn1(self.norm1(hidden_states), num_frames=f, frame_size=grid, **anchor) + hidden_states
        if self.attn2 is not None:
            h = self.attn2(self.norm2(h), encoder_hidden_states=encoder_hidden_states, num_frames=f) + h
        h = self.ff(self.norm3(h)) + h
        if not kw.get("temporal", True):  # frames as independent images (Dreamix's masked temporal attention)
            return h
        normed = self.norm_temp(h, f) if isinstance(self.norm_temp, InstanceCentering) else self.norm_temp(h)
        return self.attn_temp(normed, num_frames=f) + h


class InflatedUNet(VideoNetwork):
    """Inflated UNet. ``forward(sample [b,c,f,h,w], timestep, encoder_hidden_states [b,n,d]) -> [b,c,f,h,w]``.

    Its registered children are those of the wrapped 2D UNet, so ``state_dict()`` keys are the reference
    ``UNet3DConditionModel`` keys (``down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight``...).
    """

    def __init__(self, core: UNet2DConditionModel, attention: str = "tune-a-video",
                 attention_options: dict | None = None, temporal: str = "tune-a-video"):
        super().__init__(core)
        self.attention = attention  # key of ATTENTION_VARIANTS used by every attn1
        self.attention_options = dict(attention_options or {})  # its options (FFAM: pool_size)
        self.temporal = temporal  # one of TEMPORAL_VARIANTS

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                temporal: bool = True) -> torch.Tensor:
        """``temporal=False`` bypasses every temporal layer (Dreamix's frame batches); pass frames as the batch with
        ``f = 1`` so that the spatial layers see independent images too (:func:`~.dreamix.as_image_batch`)."""
        if sample.dim() != 5:
            raise ValueError(f"sample must be [b,c,f,h,w], got shape {tuple(sample.shape)}")
        b, _, f, _, _ = sample.shape
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} != sample batch {b}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = repeat(t.reshape(-1).expand(b), "b -> (b f)", f=f)
        context = repeat(encoder_hidden_states, "b n d -> (b f) n d", f=f)
        frames = frame_kwargs(f, tuple(sample.shape[-2:]), temporal, current_anchor())
        with FrameScope(f):  # the ResNets' GroupNorms: diffusers gives them no argument channel
            out = self._core(rearrange(sample, "b c f h w -> (b f) c h w"), t, context, return_dict=False,
                             cross_attention_kwargs=frames)[0]
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)

    @property
    def base(self) -> NetworkBase:
        return NetworkBase.INFLATED

    def enable_gradient_checkpointing(self) -> None:
        """Checkpointing whose recomputation (during backward) sees the forward's frame count
        (:func:`~.norms.checkpoint_in_frame_scope`)."""
        self._core.enable_gradient_checkpointing(checkpoint_in_frame_scope)

    def temporal_parameters(self) -> dict[str, nn.Parameter]:
        """The tensors inflation added (``attn_temp``, ``norm_temp``), by state-dict name."""
        return {k: p for k, p in self.named_parameters() if TEMPORAL_MARKER in k}

    def added_parameters(self) -> dict[str, nn.Parameter]:
        """Tensors a tuned-weights delta carries besides the tuned ones: everything inflation added."""
        return self.temporal_parameters()

    def clone(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> InflatedUNet:
        """A new InflatedUNet over the same weights, optionally on another device/dtype.

        Every parameter gets a new ``Parameter`` object (so ``requires_grad`` flags, ``.to()`` and replacement never
        reach the source); storage stays shared unless a device/dtype conversion copies it. Tensors made under
        ``torch.inference_mode`` (ComfyUI's executor) are re-wrapped over the same storage (:func:`usable_alias`) so
        autograd can use them without a copy.
        """
        core = share_clone(self._core)
        with torch.inference_mode(False):
            retarget(core, device, dtype)
        video = InflatedUNet(core, self.attention, self.attention_options, self.temporal)
        video.train(self.training)
        return video

    def with_attention(self, variant: str, options: dict | None = None) -> InflatedUNet:
        """A clone (weights shared) whose spatial self-attention is ``variant`` (a key of ATTENTION_VARIANTS) with
        ``options`` (FFAM: ``{"pool_size": p}``)."""
        attention_processor(variant, options)  # validates
        video = self.clone()
        for block in video.modules():
            if isinstance(block, VideoTransformerBlock):
                block.attn1.set_processor(attention_processor(variant, options))
        video.attention, video.attention_options = variant, dict(options or {})
        return video

    def with_temporal(self, kind: str) -> InflatedUNet:
        """A clone (weights shared) whose temporal layers are ``kind`` (one of TEMPORAL_VARIANTS). Switching to
        STAM drops ``norm_temp``'s tensors; switching back gives a fresh identity LayerNorm."""
        if kind not in TEMPORAL_VARIANTS:
            raise ValueError(f"temporal={kind!r}; expected one of {list(TEMPORAL_VARIANTS)}")
        video = self.clone()
        for block in video.modules():
            if isinstance(block, VideoTransformerBlock):
                block.set_temporal(kind)
        video.temporal = kind
        return video


def _check_inflatable(unet: nn.Module) -> None:
    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    cfg = unet.config
    bad = {k: cfg.get(k) for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim") if cfg.get(k)}
    if bad or cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise UnsupportedModelError(f"UNet config {bad or cfg.get('mid_block_type')} is not SD1.x/SD2.x-like")


def _check_variant(attention: str) -> None:
    if attention not in ATTENTION_VARIANTS:
        raise ValueError(f"attention={attention!r}; expected one of {sorted(ATTENTION_VARIANTS)}")


def inflate_unet(unet2d: UNet2DConditionModel, init_seed: int = TEMPORAL_INIT_SEED,
                 attention: str = "tune-a-video", attention_options: dict | None = None,
                 temporal: str = "tune-a-video") -> InflatedUNet:
    """Inflate a diffusers SD1.x/SD2.x UNet into a Tune-A-Video space-time :class:`InflatedUNet`.

    ``attention`` picks the spatial self-attention (:data:`ATTENTION_VARIANTS`): ``tune-a-video`` (sparse-causal) or
    ``video-p2p`` (first frame only) or ``ei2-ffam`` (fine-coarse, ``attention_options={"pool_size": p}``); all share
    every weight and the temporal layers. ``temporal`` picks the temporal layer (:data:`TEMPORAL_VARIANTS`):
    Tune-A-Video's or EI²'s STAM (no ``norm_temp`` tensors).

    ``unet2d`` is left bit-identical and keeps its own processors; its weights are shared with the result.
    The added temporal layers are created on ``unet2d``'s device and dtype. Their random initialisation
    (``attn_temp.to_q/to_k/to_v``; ``to_out`` is zero) is drawn from a CPU generator seeded with ``init_seed``, so the
    same base gives the same model whatever used the global RNG before; the global RNG state is left untouched.
    """
    _check_inflatable(unet2d)
    attention_processor(attention, attention_options)
    if temporal not in TEMPORAL_VARIANTS:
        raise ValueError(f"temporal={temporal!r}; expected one of {list(TEMPORAL_VARIANTS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return _inflate(unet2d, attention, attention_options, temporal)


def _inflate(unet2d: UNet2DConditionModel, attention: str, attention_options: dict | None = None,
             temporal: str = "tune-a-video") -> InflatedUNet:
    core = share_clone(unet2d)
    for module in list(core.modules()):
        if isinstance(module, ResnetBlock2D):
            if not isinstance(module.norm1, nn.GroupNorm) or module.time_embedding_norm != "default":
                raise UnsupportedModelError("ResNet blocks with non-GroupNorm or scale-shift norms are not SD-like")
            module.norm1 = FrameGroupNorm(module.norm1)
            module.norm2 = FrameGroupNorm(module.norm2)
        blocks = getattr(module, "transformer_blocks", None)
        if isinstance(blocks, nn.ModuleList):
            if isinstance(getattr(module, "norm", None), nn.GroupNorm):
                module.norm = FrameGroupNorm(module.norm, pool_frames=False)
            for i, block in enumerate(blocks):
                blocks[i] = VideoTransformerBlock(block, attention, attention_options, temporal)
    core.conv_norm_out = FrameGroupNorm(core.conv_norm_out)
    video = InflatedUNet(core, attention, attention_options, temporal).eval()
    for p in video.temporal_parameters().values():  # shared 2D parameters keep their flags
        p.requires_grad_(False)
    return video
