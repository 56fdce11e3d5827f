"""AnimateDiff motion modules as a video base (Guo et al., 2023, "AnimateDiff: Animate Your Personalized Text-to-Image
Diffusion Models without Specific Tuning", Sec. 4.2: a motion module of temporal transformers inserted after every
ResNet/attention pair of a frozen SD1.5 UNet).

A motion-module file (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, ...) holds only the temporal layers, in the original
key layout (``down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q``).
It is converted with diffusers' own single-file conversion
(``diffusers.loaders.single_file_utils.convert_animatediff_checkpoint_to_diffusers``) into a ``MotionAdapter`` state
dict, and combined with the user's SD1.5 UNet into a diffusers ``UNetMotionModel`` whose 2D weights are *shared* with
that UNet (built on the meta device and assigned, never copied). :class:`MotionUNet` wraps it with the interface of
the inflated :class:`~.inflate.InflatedUNet`, so every sampler, inversion and tuning path of the pack takes either.

Adapter configs of the published SD1.5 modules are shipped (:data:`ADAPTER_CONFIGS`, the values of diffusers'
``guoyww/animatediff-motion-adapter-v1-5{,-2,-3}`` configs); block widths, layer counts and the positional table
length are read off the file. Files load from safetensors, or from ``.ckpt``/``.pt`` only through
``torch.load(weights_only=True)``: never a full unpickle.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from einops import repeat
from torch import nn

from ..convert.identity import unet_hash
from ..convert.unet import UnsupportedModelError
from ..files import PICKLE_SUFFIXES
from ..files.reader import read_safetensors
from .base import NetworkBase, VideoNetwork, retarget, share_clone, usable_alias

logger = logging.getLogger(__name__)

MOTION_MARKER = ".motion_modules."

#: diffusers ``MotionAdapter`` settings of the published SD1.5 motion modules (configs of
#: guoyww/animatediff-motion-adapter-v1-5, -v1-5-2, -v1-5-3). AnimateDiff-Evolved tells them apart the same way:
#: a mid-block module is v2; without one, a 32-frame table is v3 and a 24-frame one v1.
ADAPTER_CONFIGS = {
    "v1": {"motion_num_attention_heads": 8, "motion_norm_num_groups": 32, "motion_max_seq_length": 24,
           "use_motion_mid_block": False},
    "v2": {"motion_num_attention_heads": 8, "motion_norm_num_groups": 32, "motion_max_seq_length": 32,
           "use_motion_mid_block": True},
    "v3": {"motion_num_attention_heads": 8, "motion_norm_num_groups": 32, "motion_max_seq_length": 32,
           "use_motion_mid_block": False},
}


@dataclass(frozen=True)
class MotionModuleInfo:
    """What a motion-module file is: ``version`` (v1/v2/v3), the UNet it fits (``block_out_channels``,
    ``layers_per_block``), whether it has a mid-block module, its positional table length ``max_frames``, a content
    ``hash`` and the file ``name``."""

    version: str
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    mid_block: bool
    max_frames: int
    hash: str = ""
    name: str = ""


def read_motion_module(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a motion-module file: safetensors, or a pickle-format ``.ckpt``/``.pt`` read with
    ``torch.load(weights_only=True)`` (a ``state_dict`` wrapper is unwrapped). Never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion module {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path, "motion module")[0]
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"motion module {path.name!r}: unknown file type {suffix!r} (expected .safetensors or "
                         f"{', '.join(PICKLE_SUFFIXES)})")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError and others for non-weight pickles
        raise ValueError(f"motion module {path.name!r} could not be read as plain weights (torch.load with "
                         f"weights_only=True refused it: {str(e).splitlines()[0][:200]}); convert it to "
                         f".safetensors") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"motion module {path.name!r} does not hold a flat dict of tensors")
    return dict(obj)


def _block_max(keys, block: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(rf"{block}\.(\d+)\.motion_modules\.", k))]
    return max(found, default=-1)


def inspect_motion_module(sd: Mapping[str, torch.Tensor], name: str = "motion module") -> MotionModuleInfo:
    """Identify an original-layout motion module; clear errors for files that are not SD1.5 AnimateDiff modules."""
    keys = [k for k in sd if "temporal" in k]
    if any(k.endswith("pos_encoder.positional_encoding") for k in keys):
        raise UnsupportedModelError(f"{name} is a HotshotXL (SDXL) motion module; this pack's AnimateDiff base takes "
                                    f"SD1.5 modules (v1, v2, v3)")
    down = _block_max(keys, "down_blocks")
    if down < 0:
        raise UnsupportedModelError(f"{name} is not an AnimateDiff motion module: no "
                                    f"'down_blocks.N.motion_modules.M.temporal_transformer.*' weights")
    if down == 2:
        raise UnsupportedModelError(f"{name} is an SDXL motion module (3 down blocks); the MODEL must be SD1.5, so "
                                    f"use an SD1.5 module (mm_sd_v15_v2, v3_sd15_mm, ...)")
    if "conv_in.weight" in sd:
        raise UnsupportedModelError(f"{name} is a PIA motion module (it has its own conv_in); not supported")
    pes = [v for k, v in sd.items() if k.endswith("pos_encoder.pe")]
    if not pes:
        raise UnsupportedModelError(f"{name} has no positional table (pos_encoder.pe): an AnimateLCM-style module, "
                                    f"not supported; use an AnimateDiff v1/v2/v3 SD1.5 module")
    prefix = "down_blocks.{}.motion_modules.0.temporal_transformer.proj_in.weight"
    try:
        channels = tuple(int(sd[prefix.format(i)].shape[0]) for i in range(down + 1))
    except KeyError as e:
        raise UnsupportedModelError(f"{name}: incomplete motion module, missing {e.args[0]!r}") from e
    layers = len({m.group(1) for k in keys if (m := re.match(r"down_blocks\.0\.motion_modules\.(\d+)\.", k))})
    mid = any(k.startswith("mid_block.") for k in keys)
    max_frames = int(pes[0].shape[1])
    version = "v2" if mid else ("v3" if max_frames == 32 else "v1")
    digest = "" if any(v.is_meta for v in sd.values()) else unet_hash(sd)  # meta: FLOP counting in bench/
    return MotionModuleInfo(version, channels, layers, mid, max_frames, digest, name)


_TO_ORIGINAL = ((".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."),
                (".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."))


def original_key(key: str) -> str:
    """A diffusers ``MotionAdapter``/``UNetMotionModel`` motion-module name -> the original AnimateDiff name, e.g.
    ``up_blocks.1.motion_modules.2.transformer_blocks.0.attn1.to_q.weight`` ->
    ``up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight``.
    Works on module paths too (no ``.weight``); the inverse of diffusers' single-file conversion."""
    m = re.match(r"^(.*?\.motion_modules\.\d+)\.(.*)$", key)
    if m is None:
        raise ValueError(f"{key!r} is not a motion-module name")
    head, rest = m.groups()
    rest = "." + rest + "."
    if rest.startswith(".transformer_blocks."):
        for new, old in _TO_ORIGINAL:
            rest = rest.replace(new, old, 1)
    return f"{head}.temporal_transformer{rest[:-1]}"


def to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout motion module -> ``MotionAdapter`` state dict (diffusers' conversion; the positional tables,
    which it drops and recomputes, are carried over from the file so the model is exactly the file's)."""
    temporal = {k: v for k, v in sd.items() if "temporal" in k}
    out = convert_animatediff_checkpoint_to_diffusers(temporal)
    for k, v in temporal.items():
        if k.endswith(".attention_blocks.0.pos_encoder.pe"):
            block = k[: -len(".attention_blocks.0.pos_encoder.pe")].replace(".temporal_transformer", "")
            out[f"{block}.pos_embed.pe"] = v
    return out


def to_original(adapter_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``MotionAdapter``/``UNetMotionModel`` motion-module tensors -> the original AnimateDiff layout (each
    transformer block's positional table written for both attention blocks, as the original files hold it)."""
    out = {}
    for k, v in adapter_sd.items():
        if MOTION_MARKER not in "." + k:
            continue
        if k.endswith(".pos_embed.pe"):
            block = original_key(k[: -len(".pos_embed.pe")])
            for i in (0, 1):  # separate copies: safetensors refuses tensors that share memory
                out[f"{block}.attention_blocks.{i}.pos_encoder.pe"] = v if i == 0 else v.clone()
        else:
            out[original_key(k)] = v
    return out


def check_fits(info: MotionModuleInfo, unet2d: UNet2DConditionModel) -> None:
    """The motion module's blocks must match the UNet's (an SDXL or foreign module on an SD1.5 MODEL fails here)."""
    cfg = unet2d.config
    channels = tuple(cfg.block_out_channels)
    layers = cfg.layers_per_block if isinstance(cfg.layers_per_block, int) else cfg.layers_per_block[0]
    if info.block_out_channels != channels or info.layers_per_block != layers:
        raise UnsupportedModelError(
            f"{info.name} was made for a UNet with block widths {info.block_out_channels} and "
            f"{info.layers_per_block} layers per block; this MODEL has {channels} and {layers} (SD1.5: "
            f"(320, 640, 1280, 1280) and 2). Use a motion module made for this base")


def build_motion_unet(unet2d: UNet2DConditionModel, motion_sd: Mapping[str, torch.Tensor],
                      name: str = "motion module") -> MotionUNet:
    """SD UNet + original-layout motion module -> :class:`MotionUNet`.

    The 2D tensors are ``unet2d``'s own (shared storage; ``unet2d`` is left untouched); the motion tensors are the
    file's, cast to the UNet's dtype. Every parameter starts frozen.
    """
    info = inspect_motion_module(motion_sd, name)
    check_fits(info, unet2d)
    config = dict(ADAPTER_CONFIGS[info.version], motion_max_seq_length=info.max_frames)
    with torch.device("meta"):
        template = UNetMotionModel.from_unet2d(unet2d, load_weights=False)
        # private keys ("_use_default_values") would make from_config drop the motion settings set below
        cfg = {k: v for k, v in template.config.items() if not k.startswith("_")}
        cfg.update(config, layers_per_block=info.layers_per_block)
        cfg.pop("motion_norm_num_groups")  # UNetMotionModel's motion modules use the UNet's norm_num_groups
        core = UNetMotionModel.from_config(cfg)
    param = next(unet2d.parameters())
    with torch.inference_mode(False):
        tensors = {k: usable_alias(v) for k, v in unet2d.state_dict().items()}
        tensors.update({k: usable_alias(v.to(param.device, param.dtype)) for k, v in to_diffusers(motion_sd).items()})
        missing = sorted(set(core.state_dict()) - set(tensors))
        unexpected = sorted(set(tensors) - set(core.state_dict()))
        if missing or unexpected:
            raise UnsupportedModelError(f"{name} does not fit this UNet: missing {missing[:3]}, unexpected "
                                        f"{unexpected[:3]}")
        core.load_state_dict(tensors, strict=True, assign=True)
    for p in core.parameters():
        p.requires_grad_(False)
    return MotionUNet(core.eval(), info)


class _PassThrough(nn.Module):
    """Stands in for a motion module when frames are independent images (``MotionUNet.forward(temporal=False)``)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class MotionUNet(VideoNetwork):
    """AnimateDiff video UNet. ``forward(sample [b,c,f,h,w], timestep, encoder_hidden_states [b,n,d]) -> [b,c,f,h,w]``.

    Same interface as :class:`~.inflate.InflatedUNet`. Its children are those of the wrapped ``UNetMotionModel``, so
    ``state_dict()`` keys are diffusers' (``down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight``;
    :func:`original_key` maps them to the file's). Its :attr:`base` is ``NetworkBase.ANIMATEDIFF``; ``attention``
    (``"animatediff"``, as deltas record it): the spatial self-attention is the image model's, per frame; motion comes
    from the motion modules.
    """

    attention = NetworkBase.ANIMATEDIFF.value  # recorded in deltas; :meth:`NetworkBase.of_recorded_attention`
    temporal = "animatediff"  # recorded in deltas like the inflated UNet's temporal layer kind

    @property
    def attention_options(self) -> dict:
        return {}

    @property
    def base(self) -> NetworkBase:
        return NetworkBase.ANIMATEDIFF

    def __init__(self, core: UNetMotionModel, info: MotionModuleInfo):
        super().__init__(core)
        self.info = info

    @property
    def max_frames(self) -> int:
        """The motion module's positional table: the longest clip (or context window) it takes."""
        return self.info.max_frames

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                temporal: bool = True) -> torch.Tensor:
        """``temporal=False`` skips every motion module: each frame goes through the image model alone (Dreamix's
        frame batches, :mod:`.dreamix`); the motion weights then take no part and get no gradient."""
        if sample.dim() != 5:
            raise ValueError(f"sample must be [b,c,f,h,w], got shape {tuple(sample.shape)}")
        b, f = sample.shape[0], sample.shape[2]
        if temporal and f > self.info.max_frames:
            raise ValueError(f"clip of {f} frames is longer than the motion module's positional table "
                             f"({self.info.max_frames} frames, {self.info.name}); use at most {self.info.max_frames} "
                             f"frames, or context windows with context_length <= {self.info.max_frames}")
        if encoder_hidden_states.shape[0] != b:
            raise ValueError(f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} != sample batch {b}")
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        context = repeat(encoder_hidden_states, "b n d -> (b f) n d", f=f)  # UNetMotionModel takes it per frame
        core = self._core if temporal else self._image_core()
        return core(sample, t, context, return_dict=False)[0]

    def _image_core(self) -> UNetMotionModel:
        """The same module tree (every parameter and adapter shared) with each motion module replaced by a
        pass-through; rebuilt per call so it always mirrors the current tree (LoRA adapters, training flags)."""
        core = share_clone(self._core)
        for module in core.modules():
            motion = getattr(module, "motion_modules", None)
            if isinstance(motion, nn.ModuleList):
                for i in range(len(motion)):
                    motion[i] = _PassThrough()
        return core

    def temporal_parameters(self) -> dict[str, nn.Parameter]:
        """The motion-module tensors, by state-dict name."""
        return {k: p for k, p in self.named_parameters() if MOTION_MARKER in "." + k}

    def added_parameters(self) -> dict[str, nn.Parameter]:
        """Tensors a tuned-weights delta must carry besides the tuned ones: none (the motion module is its own file,
        recorded by hash)."""
        return {}

    def clone(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MotionUNet:
        """A new MotionUNet over the same weights (new ``Parameter`` objects, storage shared unless moved/cast)."""
        core = share_clone(self._core)
        with torch.inference_mode(False):
            retarget(core, device, dtype)
        video = MotionUNet(core, self.info)
        video.train(self.training)
        return video

    def with_attention(self, variant: str, options: dict | None = None) -> MotionUNet:
        """Only its own (per-frame) spatial attention: variants apply to inflated UNets."""
        if variant != self.attention or options:
            raise ValueError(f"attention={variant!r}: spatial attention variants apply to inflated UNets "
                             f"(InflateUNetTemporal); an AnimateDiff UNet keeps per-frame self-attention")
        return self.clone()

    def with_temporal(self, kind: str) -> MotionUNet:
        """Only its own temporal layers (the motion module): temporal-layer variants apply to inflated UNets."""
        if kind != self.temporal:
            raise ValueError(f"temporal={kind!r}: temporal-layer variants apply to inflated UNets "
                             f"(InflateUNetTemporal); an AnimateDiff UNet's temporal layers are its motion module")
        return self.clone()
