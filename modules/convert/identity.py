"""Identity of a base UNet: which 2D model a video UNet, a delta or a motion module was made from.

:func:`unet_hash` is an exact content hash (fp16-rounded, so fp32 and fp16 copies agree); :func:`unet_fingerprint`
and :func:`fingerprints_match` recognise the same base held at another precision (bf16, fp8);
:func:`same_up_to_storage` compares two copies of one tensor within their storage rounding. Deltas, checkpoints and
motion modules all record these, so they live in the conversion layer that every other package may import.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import torch

from .unet import strip_ldm_prefix

_HASH_VALUES = 4096


def unet_hash(ldm_state_dict: Mapping[str, torch.Tensor]) -> str:
    """Short fingerprint of an LDM-layout UNet (ComfyUI ``diffusion_model`` keys, with or without the checkpoint
    prefix). It covers every key and shape and the first 4096 values of every tensor, rounded to fp16 so fp32 and fp16
    copies of one model agree; it reads ~5 MB of an 860M-parameter UNet, so it is cheap on every load."""
    sd = strip_ldm_prefix(ldm_state_dict)
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key]
        h.update(f"{key}:{tuple(t.shape)};".encode())
        head = t.detach().reshape(-1)[:_HASH_VALUES].to("cpu", torch.float16).float()
        h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


_FINGERPRINT_PER_TENSOR = 4


def _storage_tolerance(*dtypes: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) within which two copies of one weight agree when each was rounded to its dtype, possibly twice
    (fp32 -> fp16 -> bf16): one unit in the last place of the coarsest dtype, plus its subnormal spacing."""
    infos = [torch.finfo(d) for d in dtypes if d.is_floating_point]
    coarse = max(infos, key=lambda i: i.eps, default=torch.finfo(torch.float32))
    return 2 * coarse.eps, max(i.smallest_normal * i.eps for i in infos) if infos else 0.0


def same_up_to_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same weight, up to rounding to their storage dtypes."""
    rtol, atol = _storage_tolerance(a.dtype, b.dtype)
    return bool(torch.allclose(a.detach().float().cpu(), b.detach().float().cpu(), rtol=rtol, atol=atol))


def unet_fingerprint(ldm_state_dict: Mapping[str, torch.Tensor]) -> str:
    """A few values of every tensor (4 per tensor, evenly spaced) and the coarsest storage dtype, encoded as text.

    Unlike :func:`unet_hash` it compares with a tolerance (:func:`fingerprints_match`), so the same base held in
    bf16, fp16, fp32 or fp8 is recognised; ~2800 values (11 KB) for SD1.5."""
    sd = strip_ldm_prefix(ldm_state_dict)
    values, coarse = [], torch.float32
    for key in sorted(sd):
        flat = sd[key].detach().reshape(-1)
        if not flat.is_floating_point() or flat.numel() == 0:
            continue
        if torch.finfo(flat.dtype).eps > torch.finfo(coarse).eps:
            coarse = flat.dtype
        last, k = flat.numel() - 1, _FINGERPRINT_PER_TENSOR
        idx = torch.tensor([i * last // (k - 1) for i in range(k)], device=flat.device)  # exact for any size
        values.append(flat[idx].to("cpu", torch.float32))
    data = torch.cat(values).numpy().tobytes() if values else b""
    return f"{str(coarse).removeprefix('torch.')}:{base64.b64encode(data).decode()}"


def fingerprints_match(a: str, b: str) -> bool:
    """Whether two :func:`unet_fingerprint` strings come from the same weights, up to their storage rounding."""
    try:
        (dtype_a, data_a), (dtype_b, data_b) = a.split(":", 1), b.split(":", 1)
        ta = torch.frombuffer(bytearray(base64.b64decode(data_a)), dtype=torch.float32)
        tb = torch.frombuffer(bytearray(base64.b64decode(data_b)), dtype=torch.float32)
        dtypes = (getattr(torch, dtype_a), getattr(torch, dtype_b))
    except (ValueError, AttributeError, TypeError):
        return False
    if ta.shape != tb.shape:
        return False
    rtol, atol = _storage_tolerance(*dtypes)
    return bool(torch.allclose(ta, tb, rtol=rtol, atol=atol))


def base_identity(ldm_state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``base_hash`` and ``base_fingerprint`` of a base UNet, as :class:`~..video_unet.VideoUNet` fields."""
    return {"base_hash": unet_hash(ldm_state_dict), "base_fingerprint": unet_fingerprint(ldm_state_dict)}
