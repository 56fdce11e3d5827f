"""A dependency-free loss-curve renderer, so tuning nodes can show their curve as an ``IMAGE``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_curve_image(losses: Sequence[float], width: int = 512, height: int = 256,
                     title: str = "loss") -> torch.Tensor:
    """Plot raw (grey) and moving-average (blue) loss per step. Returns ``[1, height, width, 3]`` in 0..1."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    vals = [v for v in losses if math.isfinite(v)]
    pad_l, pad_r, pad_t, pad_b = 48, 12, 22, 22
    draw.rectangle([pad_l, pad_t, width - pad_r, height - pad_b], outline=(0, 0, 0))
    if vals:
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1e-6

        def xy(i, v, n):
            x = pad_l + (width - pad_l - pad_r) * (i / max(n - 1, 1))
            y = height - pad_b - (height - pad_t - pad_b) * ((v - lo) / (hi - lo))
            return x, y

        n = len(losses)
        raw = [xy(i, v, n) for i, v in enumerate(losses) if math.isfinite(v)]
        smooth = [xy(i, v, n) for i, v in enumerate(_smooth(list(losses), max(n // 20, 1)))]
        if len(raw) > 1:
            draw.line(raw, fill=(190, 190, 190), width=1)
            draw.line(smooth, fill=(30, 90, 200), width=2)
        draw.text((4, pad_t - 4), f"{hi:.4g}", fill=(0, 0, 0))
        draw.text((4, height - pad_b - 8), f"{lo:.4g}", fill=(0, 0, 0))
        draw.text((pad_l, height - pad_b + 4), f"0 .. {n} steps", fill=(0, 0, 0))
        draw.text((pad_l + 4, 4), f"{title}: first {vals[0]:.4f}  last {vals[-1]:.4f}", fill=(0, 0, 0))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]
