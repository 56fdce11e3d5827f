"""Scoring a whole set of edits and reporting it as the papers' tables do (Tune-A-Video Table 1, Sec. 5).

An **edit set** is a folder with a manifest, ``manifest.json`` or ``manifest.csv`` (or the manifest file itself):

- JSON: a list of objects, or ``{"edits": [...]}``; CSV: a header row. Fields per edit: ``video`` (a video file,
  ``.mp4``/``.webm``/``.mov``/``.webp``/``.gif``, or a folder of frames ``.png``/``.jpg`` in name order), ``prompt``
  (the edited prompt), ``method`` (the table row); optional ``source`` (the source clip: file or frame folder),
  ``source_start`` and ``source_stride`` (which source frames the edit was made from, default 0 and 1; the source must
  then have at least as many frames as the edit), ``name``. Paths are relative to the manifest's folder.

Every edit is scored with :func:`~.clip_score.score_video` (the same engine as the ComfyUI node). The report is a
new folder ``clip_eval_NNNNN`` (never overwriting anything) holding ``table.md`` and ``table.csv`` (one row per
method: mean and sample standard deviation over its videos, x 100 as the papers print them), ``edits.csv`` (every
video's numbers) and ``plot.png`` (text alignment against frame consistency, per edit and per method).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files.atomic import atomic_write
from ..files.video_io import iter_frames
from .charts import tradeoff_plot
from .clip_score import CLIP_EVAL, ClipScoreModel, score_video

logger = logging.getLogger(__name__)

MANIFESTS = ("manifest.json", "manifest.csv")
FRAME_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METRICS = (("frame_consistency", "Frame consistency"), ("text_alignment", "Text alignment"),
           ("source_similarity", "Source similarity"))



@dataclass(frozen=True)
class Edit:
    """One edited video of the set: where its frames are, its edited prompt, the method that made it."""

    name: str
    video: Path
    prompt: str
    method: str
    source: Path | None = None
    source_start: int = 0
    source_stride: int = 1


# ------------------------------------------------------------------------------------------------------- manifest
def manifest_path(edits: str | os.PathLike) -> Path:
    path = Path(edits)
    if path.is_dir():
        for name in MANIFESTS:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"--edits {path} has no {' or '.join(MANIFESTS)} (see README: Evaluation)")
    if not path.is_file():
        raise FileNotFoundError(f"--edits {path} not found")
    return path


def load_manifest(edits: str | os.PathLike) -> list[Edit]:
    """The edits listed by a manifest (file, or folder holding one); ValueError naming the entry and field."""
    path = manifest_path(edits)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            entries = list(csv.DictReader(f))
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data.get("edits") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f"{path.name} must hold a list of edits or {{\"edits\": [...]}}")
    if not entries:
        raise ValueError(f"{path.name} lists no edits")
    return [_edit(entry, i, path.parent, path.name) for i, entry in enumerate(entries)]


def _edit(entry, index: int, root: Path, where: str) -> Edit:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: edit {index} must be an object with video, prompt, method")
    for key in ("video", "prompt", "method"):
        if not str(entry.get(key) or "").strip():
            raise ValueError(f"{where}: edit {index} has no {key!r}")
    video = root / str(entry["video"])
    if not video.exists():
        raise FileNotFoundError(f"{where}: edit {index}: video {video} not found")
    source = str(entry.get("source") or "").strip()
    source_path = root / source if source else None
    if source_path is not None and not source_path.exists():
        raise FileNotFoundError(f"{where}: edit {index}: source {source_path} not found")
    try:
        start, stride = int(entry.get("source_start") or 0), int(entry.get("source_stride") or 1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: edit {index}: source_start/source_stride must be integers") from e
    if start < 0 or stride < 1:
        raise ValueError(f"{where}: edit {index}: source_start={start} must be >= 0 and source_stride={stride} >= 1")
    name = str(entry.get("name") or Path(str(entry["video"])).stem)
    return Edit(name, video, str(entry["prompt"]), str(entry["method"]), source_path, start, stride)


def read_frames(path: str | os.PathLike, start: int = 0, stride: int = 1, count: int = 0) -> torch.Tensor:
    """Frames ``start, start + stride, ...`` (``count`` of them; 0: all) of a video file or a folder of images, at
    their own size: ``[F, H, W, 3]`` float32 in 0..1."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS)
        if not files:
            raise ValueError(f"{path} holds no frames ({', '.join(FRAME_EXTS)})")
        picked = [torch.from_numpy(np.array(_image_rgb(p))) for p in files[start::stride][:count or None]]
    else:
        with contextlib.closing(iter_frames(path, start, stride, count, pillow_suffixes=(".webp", ".gif"))) as arrays:
            picked = [torch.from_numpy(np.array(a)) for a in arrays]
    if not picked or (count and len(picked) < count):
        raise ValueError(f"{path.name}: {len(picked)} frames from start {start} stride {stride}, needed "
                         f"{count or 'at least 1'}")
    if len({tuple(p.shape) for p in picked}) > 1:
        raise ValueError(f"{path.name}: frames of different sizes")
    return torch.stack(picked).float() / 255.0


def _image_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------------------- scoring
def evaluate_edits(clip: ClipScoreModel, edits: list[Edit], device: torch.device | str | None = None,
                   max_frames: int = 0, batch_size: int = CLIP_EVAL.batch_size,
                   callback: Callable[[int, int, dict], None] | None = None) -> list[dict]:
    """Score every edit; one row per edit (name, method, prompt, frames and the :class:`VideoScore` fields)."""
    rows = []
    for i, edit in enumerate(edits):
        frames = read_frames(edit.video, count=max_frames)
        source = None
        if edit.source is not None:
            source = read_frames(edit.source, edit.source_start, edit.source_stride, count=frames.shape[0])
        try:
            score = score_video(clip, frames, edit.prompt, source, device=device, batch_size=batch_size)
        except ValueError as e:
            raise ValueError(f"edit {i} ({edit.name}): {e}") from e
        rows.append({"name": edit.name, "method": edit.method, "video": str(edit.video), "prompt": edit.prompt,
                     **score.as_dict()})
        if callback is not None:
            callback(i + 1, len(edits), {"name": edit.name, "text_alignment": score.text_alignment})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per method (in order of first appearance): videos, and mean / sample std over its videos of each metric,
    x 100 (the papers' convention: consistency 92.40, CLIP score 27.12). std is None for a single video."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {"method": method, "videos": len(mine), "frames": sum(r["frames"] for r in mine)}
        for key, _ in METRICS:
            values = [_percent(key, r[key]) for r in mine if r.get(key) is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


def _percent(key: str, value: float) -> float:
    return value if key == "text_alignment" else 100.0 * value  # the CLIP score is x 100 already


# ------------------------------------------------------------------------------------------------------- report
def _fmt(mean, std) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def markdown_table(summary: list[dict], model: str) -> str:
    keys = [(k, t) for k, t in METRICS if any(s[f"{k}_mean"] is not None for s in summary)]
    lines = ["| Method | " + " | ".join(f"{t} ↑" for _, t in keys) + " | Videos |",
             "|---|" + "---:|" * len(keys) + "---:|"]
    for s in summary:
        lines.append(f"| {s['method']} | " + " | ".join(_fmt(s[f'{k}_mean'], s[f'{k}_std']) for k, _ in keys)
                     + f" | {s['videos']} |")
    lines += ["", "Mean ± sample standard deviation over each method's videos, x 100. Frame consistency: mean CLIP "
              "image-embedding cosine over all pairs of frames; text alignment: mean CLIP score (100 x cosine) of "
              "every frame with its edited prompt; source similarity: mean cosine of each frame with its source "
              f"frame (Tune-A-Video, Sec. 5). Model: {model}.", ""]
    return "\n".join(lines)


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    return buf.getvalue()


def new_report_folder(out: str | os.PathLike, stem: str = "clip_eval") -> Path:
    """Create and return ``out/stem_NNNNN``, the first number not taken (race-safe: mkdir fails if it exists)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        folder = out / f"{stem}_{n:05d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


def write_report(out: str | os.PathLike, rows: list[dict], model: str) -> Path:
    """``table.md``, ``table.csv``, ``edits.csv``, ``plot.png`` in a new folder under ``out`` (atomic writes)."""
    summary = summarize(rows)
    folder = new_report_folder(out)
    edit_rows = [{**r, "min_consecutive": min(r["consecutive"]) if r["consecutive"] else None} for r in rows]
    edit_fields = ["name", "method", "video", "prompt", "frames", "frame_consistency", "text_alignment",
                   "source_similarity", "min_consecutive"]
    table_fields = ["method", "videos", "frames"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")]
    files = {"table.md": markdown_table(summary, model), "table.csv": _csv(summary, table_fields),
             "edits.csv": _csv(edit_rows, edit_fields)}
    for name, text in files.items():
        atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    image = tradeoff_plot(rows, summary)
    atomic_write(folder / "plot.png", lambda tmp: image.save(tmp, format="PNG"))
    return folder
