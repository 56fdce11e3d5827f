"""Loading LDM state dicts into modules built on the meta device (shared by the VAE and text-encoder converters)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .unet import UnsupportedModelError


def sub_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state_dict`` without ``prefix`` if any key has it, else unchanged."""
    if any(k.startswith(prefix) for k in state_dict):
        return sub_prefix(state_dict, prefix)
    return dict(state_dict)


def assign_weights(model: torch.nn.Module, target_to_value: dict[str, torch.Tensor], name: str) -> None:
    """Load ``target_to_value`` into a meta-device ``model`` (reshaping 1x1 convs <-> linears), checking shapes."""
    target = model.state_dict()
    for key, value in list(target_to_value.items()):
        want = target[key].shape
        if value.shape != want:
            if value.numel() == target[key].numel() and value.dim() in (2, 4) and len(want) in (2, 4):
                target_to_value[key] = value.reshape(want)
            else:
                raise UnsupportedModelError(f"{name}: weight for {key!r} has shape {tuple(value.shape)}, the config "
                                            f"read off the weights expects {tuple(want)}")
    model.load_state_dict(target_to_value, assign=True, strict=True)


def check_no_meta(model: torch.nn.Module, name: str) -> None:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{name}: internal error, tensors left uninitialised after loading: {left[:3]}")


def describe_keys(keys: Sequence[str]) -> str:
    """Summarise key groups (``first_stage_model.encoder.* (120), ...``) for error messages."""
    groups: dict[str, int] = {}
    for k in keys:
        head = ".".join(k.split(".")[:2]) if k.count(".") >= 2 else k.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{g}.* ({n})" for g, n in top) or "no tensors"
