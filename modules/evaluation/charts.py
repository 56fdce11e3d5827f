"""Charts of CLIP metrics (Tune-A-Video Sec. 5): the edit-set report's trade-off plot (text alignment against frame
consistency, per edit and per method) and one video's per-frame chart (where it drifts). Drawn with Pillow only."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .clip_score import VideoScore

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))


def _axes(draw, box, lo, hi, label, vertical: bool):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    if vertical:
        draw.text((4, y0 - 4), f"{hi:.2f}", fill=(0, 0, 0))
        draw.text((4, y1 - 8), f"{lo:.2f}", fill=(0, 0, 0))
        draw.text((4, (y0 + y1) // 2), label, fill=(0, 0, 0))
    else:
        draw.text((x0, y1 + 4), f"{lo:.2f}", fill=(0, 0, 0))
        draw.text((x1 - 40, y1 + 4), f"{hi:.2f}", fill=(0, 0, 0))
        draw.text(((x0 + x1) // 2 - 60, y1 + 4), label, fill=(0, 0, 0))


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.1, 1e-3)
    return lo - pad, hi + pad


def tradeoff_plot(rows: list[dict], summary: list[dict], width: int = 720, height: int = 480) -> Image.Image:
    """Text alignment (x) against frame consistency (y, x 100): a dot per edit, a square with ±1 std whiskers per
    method, coloured by method. Without text alignment the x axis is the edit's index."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    box = (70, 30, width - 190, height - 40)
    has_text = all(r.get("text_alignment") is not None for r in rows)
    xs = [r["text_alignment"] if has_text else i for i, r in enumerate(rows)]
    ys = [100 * r["frame_consistency"] for r in rows]
    ext_x, ext_y = list(xs), list(ys)  # the axes hold every dot and every whisker
    for s in summary if has_text else []:
        for key, ext in (("text_alignment", ext_x), ("frame_consistency", ext_y)):
            ext += [s[f"{key}_mean"] - (s[f"{key}_std"] or 0.0), s[f"{key}_mean"] + (s[f"{key}_std"] or 0.0)]
    (xl, xh), (yl, yh) = _span(ext_x), _span(ext_y)

    def at(x, y):
        return (box[0] + (box[2] - box[0]) * (x - xl) / (xh - xl), box[3] - (box[3] - box[1]) * (y - yl) / (yh - yl))

    _axes(draw, box, xl, xh, "text alignment (CLIP score)" if has_text else "edit", vertical=False)
    _axes(draw, box, yl, yh, "consistency", vertical=True)
    colour = {s["method"]: COLOURS[i % len(COLOURS)] for i, s in enumerate(summary)}
    for x, y, r in zip(xs, ys, rows, strict=True):
        px, py = at(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour[r["method"]])
    for i, s in enumerate(summary):
        c = colour[s["method"]]
        if has_text:
            mx, my = at(s["text_alignment_mean"], s["frame_consistency_mean"])
            sx, sy = s["text_alignment_std"] or 0.0, s["frame_consistency_std"] or 0.0
            draw.line([at(s["text_alignment_mean"] - sx, s["frame_consistency_mean"]),
                       at(s["text_alignment_mean"] + sx, s["frame_consistency_mean"])], fill=c, width=2)
            draw.line([at(s["text_alignment_mean"], s["frame_consistency_mean"] - sy),
                       at(s["text_alignment_mean"], s["frame_consistency_mean"] + sy)], fill=c, width=2)
            draw.rectangle([mx - 6, my - 6, mx + 6, my + 6], outline=(0, 0, 0), fill=c)
        ly = box[1] + 18 * i
        draw.rectangle([box[2] + 12, ly, box[2] + 24, ly + 12], fill=c)
        draw.text((box[2] + 30, ly), f"{s['method'][:24]} ({s['videos']})", fill=(0, 0, 0))
    draw.text((box[0], 8), "CLIP metrics per edit (dots) and per method (squares, ±1 std)", fill=(0, 0, 0))
    return img


def video_chart(score: VideoScore, width: int = 640, height: int = 400, title: str = "") -> torch.Tensor:
    """Where a video drifts: per-frame CLIP score with the prompt (top) and the cosine of consecutive frames (and of
    each frame with its source, bottom). The lowest point of each curve is marked. ``[1, height, width, 3]`` 0..1."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    text = [f"frames {score.frames}", f"consistency {score.frame_consistency:.4f}"]
    if score.text_alignment is not None:
        text.append(f"text alignment {score.text_alignment:.2f}")
    if score.source_similarity is not None:
        text.append(f"source similarity {score.source_similarity:.4f}")
    draw.text((8, 6), (title + "  " if title else "") + "   ".join(text), fill=(0, 0, 0))
    half = (height - 30) // 2
    panels = [(30, 30 + half - 24, "CLIP score per frame (text alignment)",
               [(score.text_per_frame, (30, 90, 200), 0)] if score.text_per_frame else []),
              (30 + half, height - 24, "cosine: frame i vs i+1 (blue), vs source (green)",
               [(score.consecutive, (30, 90, 200), 0.5)]
               + ([(score.source_per_frame, (44, 160, 44), 0)] if score.source_per_frame else []))]
    for top, bottom, label, series in panels:
        _panel(draw, (56, top, width - 12, bottom), label, series, score.frames)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def _panel(draw, box, label, series, frames: int) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 + 2), label, fill=(0, 0, 0))
    values = [v for s, _, _ in series for v in s if math.isfinite(v)]
    if not values:
        draw.text((x0 + 4, y0 + 18), "n/a (no two-tower CLIP connected)", fill=(120, 120, 120))
        return
    lo, hi = _span(values)
    draw.text((4, y0), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((4, y1 - 10), f"{lo:.3g}", fill=(0, 0, 0))
    draw.text((x0, y1 + 2), "frame 0", fill=(0, 0, 0))
    draw.text((x1 - 60, y1 + 2), f"frame {frames - 1}", fill=(0, 0, 0))
    for values_, colour, offset in series:
        pts = [(x0 + (x1 - x0) * ((i + offset) / max(frames - 1, 1)), y1 - (y1 - y0 - 16) * (v - lo) / (hi - lo))
               for i, v in enumerate(values_)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for px, py in pts:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        worst = min(range(len(values_)), key=values_.__getitem__)
        px, py = pts[worst]
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], outline=(214, 39, 40), width=2)
        draw.text((min(px + 6, x1 - 90), min(py, y1 - 12)), f"min {values_[worst]:.3f} @ {worst}", fill=(214, 39, 40))
