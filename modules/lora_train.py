"""LoRA adapters for the tuning loop (Dreamix's LoRA preset), with peft, merged into plain weights at the end.

Interim home: the pack's shared LoRA module (``modules/lora.py``, MotionDirector) is being written on main; this file
should move onto it when both are merged. LoRA (Hu et al., 2022): ``W' = W + (alpha / r) B A`` with ``A`` random and
``B`` zero at the start, so the adapted model starts equal to the base.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def add_lora(unet: nn.Module, weight_names: list[str], rank: int) -> list[nn.Parameter]:
    """Wrap the ``nn.Linear`` modules owning ``weight_names`` (``...to_q.weight``) of ``unet`` (in place: pass a
    clone) with LoRA adapters of ``rank``; returns the adapter parameters (trainable, float32)."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"lora_rank={rank} must be >= 1")
    modules = sorted({n.rsplit(".", 1)[0] for n in weight_names if n.endswith(".weight")})
    linear = [m for m in modules if isinstance(unet.get_submodule(m), nn.Linear)]
    if not linear:
        raise ValueError("the LoRA preset found no linear layers among the trainable modules")
    pattern = "^(" + "|".join(re.escape(m) for m in linear) + ")$"
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=pattern, lora_dropout=0.0), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def merged_weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": W + delta}`` for every LoRA-wrapped linear layer of ``unet`` (names without peft's
    ``base_layer``), as float32 copies."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer().weight
            delta = module.get_delta_weight("default")
            out[f"{name}.weight"] = (base.detach().float() + delta.detach().float()).clone()
    return out
