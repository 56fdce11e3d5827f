"""LoRA on video UNets: peft adapters for training, one in-memory form, the ecosystem's two file layouts.

- Training: :func:`add_adapter` injects a peft LoRA adapter (``init_lora_weights="gaussian"``: down ~ N(0, 1/r), up 0,
  MotionDirector's init, ``utils/lora.py:54-55``; ``lora_alpha = r`` so the scale is 1 as there) into a clone of a
  video UNet; :func:`activate` chooses which adapters run and which train.
- In memory: :class:`LoRAWeights`, the ``(down [r,in], up [out,r])`` pair of every adapted ``nn.Linear`` by module
  path of the video UNet, with ``alpha``; :func:`merge` bakes it into a :class:`~.video_model.VideoUNet` at a
  strength (new tensors only for the adapted weights; the rest stays shared).
- Files (safetensors, metadata carried along):
  * spatial LoRAs: kohya's diffusers-name layout that ComfyUI core's ``LoraLoader`` maps for SD1.x
    (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight``, ``.lora_up.weight``,
    ``.alpha``; ``comfy/lora.py`` ``model_lora_keys_unet``), so they load on any SD1.5 MODEL;
  * temporal (motion) LoRAs on the AnimateDiff base: AnimateDiff's MotionLoRA layout that AnimateDiff-Evolved's
    motion-LoRA loader reads (``...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0
    .processor.to_q_lora.down.weight``; feed-forward as ``ff.net.0.processor.proj_lora``/``ff.net.processor.2_lora``).
    That loader ignores ``alpha`` and applies ``strength * up @ down``, so the scale is baked into ``up``. On the
    inflated base the same layout names the Tune-A-Video modules (``...attn_temp.processor.to_q_lora...``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from ..files.atomic import atomic_write
from ..files.reader import read_safetensors
from ..finite import check_finite_tensors
from ..networks.animatediff import MOTION_MARKER, original_key
from ..networks.base import NetworkBase, VideoNetwork

logger = logging.getLogger(__name__)

FORMAT = "tunevideo.lora.v1"
_ATTN = r"(to_q|to_k|to_v|to_out\.0)"
_FF = r"ff\.net\.(0\.proj|2)"
#: Spatial LoRA: self-attention and feed-forward of the image transformer blocks (MotionDirector ``utils/lora.py:356``
#: keeps ``attn1`` and ``ff`` of every ``Transformer2DModel``; cross-attention is left alone).
SPATIAL_TARGETS = rf"(.*\.)?attentions\.\d+\.transformer_blocks\.\d+\.(attn1\.{_ATTN}|{_FF})"
#: Temporal LoRA: both temporal attentions and the feed-forward of every temporal transformer block
#: (``utils/lora.py:358`` keeps ``attn1``, ``attn2``, ``ff`` of ``TransformerTemporalModel``): AnimateDiff's motion
#: modules; on the inflated Tune-A-Video UNet its ``attn_temp``.
TEMPORAL_TARGETS = {
    "animatediff": rf".*motion_modules\.\d+\.transformer_blocks\.\d+\.(attn1\.{_ATTN}|attn2\.{_ATTN}|{_FF})",
    "inflated": rf".*transformer_blocks\.\d+\.attn_temp\.{_ATTN}",
}
KOHYA_PREFIX = "lora_unet_"


def base_kind(unet: VideoNetwork) -> str:
    """The name LoRA files record for ``unet``'s base (:class:`~.base.NetworkBase` value): ``animatediff`` for a
    :class:`~.animatediff.MotionUNet`, ``inflated`` for a Tune-A-Video ``InflatedUNet``."""
    return unet.base.value


@dataclass(frozen=True)
class LoRAWeights:
    """One LoRA: ``layers[module path] = (down [r, in], up [out, r])``; effective delta ``alpha / r * up @ down``.

    ``kind`` is ``spatial`` or ``temporal``; ``base`` the video-UNet kind it was trained on (:func:`base_kind`);
    ``metadata``: what made it (saved with the file).
    """

    kind: str
    base: str
    layers: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    alpha: float
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(next(iter(self.layers.values()))[0].shape[0]) if self.layers else 0

    def deltas(self, strength: float = 1.0) -> dict[str, torch.Tensor]:
        """``module path + ".weight"`` -> ``strength * alpha / r * up @ down`` (float32)."""
        out = {}
        for path, (down, up) in self.layers.items():
            scale = strength * self.alpha / down.shape[0]
            out[f"{path}.weight"] = scale * (up.float() @ down.float())
        return out


def add_adapter(unet: nn.Module, name: str, targets: str, rank: int, dropout: float) -> int:
    """Inject peft LoRA adapter ``name`` into every ``nn.Linear`` of ``unet`` whose module path fully matches the
    regex ``targets``. ``unet`` must be a private clone (peft replaces its modules in place). Returns the count."""
    hits = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear | LoraLayer) and re.fullmatch(targets, n)]
    if not hits:
        raise ValueError(f"LoRA {name!r}: no layer of this video UNet matches {targets!r}")
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=targets,
                        init_lora_weights="gaussian")
    with warnings.catch_warnings():  # "multiple adapters in the model": intended (one spatial LoRA per clip)
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, unet, adapter_name=name)
    return len(hits)


def lora_layers(unet: nn.Module) -> dict[str, LoraLayer]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}


def activate(unet: nn.Module, running: Iterable[str], training: Iterable[str] = ()) -> None:
    """Adapters in ``running`` take part in the forward pass (others are skipped); only those in ``training`` get
    gradients. Base weights stay frozen."""
    running, training = list(running), set(training)
    for layer in lora_layers(unet).values():
        layer.set_adapter([a for a in running if a in layer.lora_A])
        for adapter in layer.lora_A:
            for p in (*layer.lora_A[adapter].parameters(), *layer.lora_B[adapter].parameters()):
                p.requires_grad_(adapter in training)


def adapter_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for layer in lora_layers(unet).values() if name in layer.lora_A
            for p in (*layer.lora_A[name].parameters(), *layer.lora_B[name].parameters())]


def extract(unet: nn.Module, name: str, kind: str, metadata: Mapping[str, str] | None = None) -> LoRAWeights:
    """The trained adapter ``name`` as :class:`LoRAWeights` (float32 CPU copies)."""
    layers, alpha = {}, None
    for path, layer in lora_layers(unet).items():
        if name not in layer.lora_A:
            continue
        down = layer.lora_A[name].weight.detach().float().cpu().clone()
        up = layer.lora_B[name].weight.detach().float().cpu().clone()
        layers[path] = (down, up)
        alpha = layer.scaling[name] * down.shape[0]
    if not layers:
        raise KeyError(f"no LoRA adapter {name!r} in this UNet")
    return LoRAWeights(kind, base_kind(unet), layers, float(alpha), dict(metadata or {}))


def add_lora(unet: nn.Module, weight_names: list[str], rank: int, name: str = "default") -> list[nn.Parameter]:
    """LoRA on the ``nn.Linear`` layers owning ``weight_names`` (``...to_q.weight``) of ``unet`` (a private clone),
    no dropout; returns the adapter's parameters, float32 and trainable (Dreamix's LoRA preset in the tuning loop)."""
    if rank < 1:
        raise ValueError(f"lora_rank={rank} must be >= 1")
    modules = sorted({n.rsplit(".", 1)[0] for n in weight_names if n.endswith(".weight")})
    linear = [m for m in modules if isinstance(unet.get_submodule(m), nn.Linear)]
    if not linear:
        raise ValueError("the LoRA preset found no linear layers among the trainable modules")
    add_adapter(unet, name, "(" + "|".join(re.escape(m) for m in linear) + ")", rank, 0.0)
    activate(unet, [name], [name])
    params = adapter_parameters(unet, name)
    for p in params:
        p.data = p.data.float()
    return params


def merged_weights(unet: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """``{"<module>.weight": W + delta}`` (float32 copies) for every layer carrying adapter ``name``."""
    layers, out = lora_layers(unet), {}
    for key, delta in extract(unet, name, "adapter").deltas().items():
        base = layers[key[: -len(".weight")]].get_base_layer().weight.detach().float()
        out[key] = base + delta.to(base.device)
    return out


def merge(model, lora: LoRAWeights, strength: float = 1.0, name: str = "LoRA"):
    """``model`` (a :class:`~.video_model.VideoUNet`) with ``lora`` baked in at ``strength``: a new model whose
    changed weights are new tensors and whose other weights stay shared. Clear errors for a LoRA of another base."""
    if strength == 0 or not lora.layers:
        return model
    if lora.base != base_kind(model.network):
        raise ValueError(f"{name} is a {lora.kind} LoRA for the {lora.base} base; this VIDEO_UNET is "
                         f"{base_kind(model.network)}")
    params = dict(model.network.named_parameters())
    new = {}
    for key, delta in lora.deltas(strength).items():
        if key not in params:
            raise ValueError(f"{name}: layer {key!r} does not exist in this VIDEO_UNET (made for another model?)")
        if params[key].shape != delta.shape:
            raise ValueError(f"{name}: layer {key!r} is {tuple(delta.shape)} in the LoRA but "
                             f"{tuple(params[key].shape)} in this VIDEO_UNET (made for another model?)")
        new[key] = params[key].float() + delta.to(params[key].device)
    return model.with_tensors(new)


def merge_all(model, loras: Iterable[tuple[LoRAWeights | None, float, str]]):
    """``model`` with every ``(lora, strength, name)`` baked in, in order (:func:`merge`); None LoRAs are skipped."""
    for lora, strength, name in loras:
        if lora is not None:
            model = merge(model, lora, strength, name)
    return model


def provenance(model) -> dict[str, str]:
    """What a LoRA file records about the VIDEO_UNET it was trained on: the base model's hash, and the motion module's
    name and hash (empty on the inflated base)."""
    info = getattr(model.network, "info", None)
    return {"base_model_hash": model.base_hash, "motion_module": getattr(info, "name", ""),
            "motion_module_hash": getattr(info, "hash", "")}


# --------------------------------------------------------------------------------------------------------------- files


def _processor_key(path: str) -> str:
    """``...attention_blocks.0.to_out.0`` -> ``...attention_blocks.0.processor.to_out_lora`` (MotionLoRA layout)."""
    parent, leaf = (path[: -len(".to_out.0")], "to_out") if path.endswith(".to_out.0") else path.rsplit(".", 1)
    return f"{parent}.processor.{leaf}_lora"


def _from_processor_key(key: str) -> str:
    parent, _, leaf = key.partition(".processor.")
    leaf = leaf.removesuffix("_lora")
    return f"{parent}.to_out.0" if leaf == "to_out" else f"{parent}.{leaf}"


def _diffusers_motion_path(original: str) -> str:
    return next(iter(convert_animatediff_checkpoint_to_diffusers({original: None})))


def to_file_tensors(lora: LoRAWeights) -> dict[str, torch.Tensor]:
    """The LoRA in its ecosystem layout (see the module docstring), float32 contiguous tensors."""
    out = {}
    if lora.kind == "spatial":
        for path, (down, up) in lora.layers.items():
            key = KOHYA_PREFIX + path.replace(".", "_")
            out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
            out[f"{key}.alpha"] = torch.tensor(float(lora.alpha))
    else:
        for path, (down, up) in lora.layers.items():
            name = original_key(path) if NetworkBase(lora.base) is NetworkBase.ANIMATEDIFF else path
            key = _processor_key(name)
            out[f"{key}.down.weight"] = down
            out[f"{key}.up.weight"] = up * (lora.alpha / down.shape[0])  # the loader ignores alpha
    return {k: v.contiguous() for k, v in out.items()}


def save_lora(lora: LoRAWeights, path: str | os.PathLike, overwrite: bool = False) -> dict[str, str]:
    """Write ``lora`` atomically (never replacing an existing file unless ``overwrite``). Returns the metadata."""
    meta = {**{k: str(v) for k, v in lora.metadata.items()}, "format": FORMAT, "kind": lora.kind, "base": lora.base,
            "rank": str(lora.rank), "alpha": str(lora.alpha),
            "layout": "kohya-diffusers" if lora.kind == "spatial" else "animatediff-motion-lora"}
    tensors = to_file_tensors(lora)
    check_finite_tensors(tensors, f"{lora.kind} LoRA {Path(path).name}")
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite)
    return meta


def load_lora(path: str | os.PathLike, unet: nn.Module, kind: str) -> LoRAWeights:
    """Read a spatial (kohya diffusers-name) or temporal (MotionLoRA) file for ``unet``'s module names."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {path.name!r}: only .safetensors files are read")
    tensors, meta = read_safetensors(path, "LoRA")
    base = base_kind(unet)
    layers, alphas = {}, set()
    if kind == "spatial":
        names = {KOHYA_PREFIX + n.replace(".", "_"): n for n, m in unet.named_modules() if isinstance(m, nn.Linear)}
        for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
            stem = key[: -len(".lora_down.weight")]
            if stem not in names:
                raise ValueError(f"LoRA {path.name!r}: {stem!r} names no linear layer of this VIDEO_UNET")
            layers[names[stem]] = (tensors[key].float(), tensors[f"{stem}.lora_up.weight"].float())
            if f"{stem}.alpha" in tensors:
                alphas.add(float(tensors[f"{stem}.alpha"]))
        alpha = alphas.pop() if len(alphas) == 1 else None
    else:
        for key in [k for k in tensors if k.endswith(".down.weight") and ".processor." in k]:
            stem = key[: -len(".down.weight")]
            module = _from_processor_key(stem)
            if MOTION_MARKER in "." + module and "temporal_transformer" in module:
                if base != NetworkBase.ANIMATEDIFF.value:
                    raise ValueError(f"LoRA {path.name!r} is an AnimateDiff motion LoRA; this VIDEO_UNET is "
                                     f"{base} (build it with AnimateDiffVideoUNet)")
                module = _diffusers_motion_path(module)
            layers[module] = (tensors[key].float(), tensors[f"{stem}.up.weight"].float())
        alpha = None  # scale is baked into up
    if not layers:
        raise ValueError(f"LoRA {path.name!r} holds no {kind} LoRA pairs (expected "
                         f"{'*.lora_down.weight' if kind == 'spatial' else '*.processor.*_lora.down.weight'} keys)")
    rank = next(iter(layers.values()))[0].shape[0]
    file_base = meta.get("base", base)
    if file_base != base:
        raise ValueError(f"LoRA {path.name!r} was trained on the {file_base} base; this VIDEO_UNET is {base}")
    return LoRAWeights(kind, base, layers, float(alpha if alpha is not None else rank), meta)


def metadata_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)
