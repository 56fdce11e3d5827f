"""CLIP evaluation faces: the ComfyUI nodes (with a CLIP_VISION as ComfyUI builds it) and the edit-set CLI."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import torch
from clip_helpers import smooth_frames, write_clip_folder, write_vision_only_file
from PIL import Image
from tunevideo import cli
from tunevideo.modules.evaluation.charts import video_chart
from tunevideo.modules.evaluation.clip_eval import load_manifest, read_frames
from tunevideo.modules.evaluation.clip_files import load_clip_model
from tunevideo.modules.evaluation.clip_score import CLIP_MEAN, CLIP_STD, score_video
from tunevideo.modules.files.video_io import write_video
from tunevideo.nodes import host
from tunevideo.nodes.evaluate import CLIPVideoScore, LoadCLIPScoreModel

PROMPT = "a bear is skiing on the snow"


class ComfyStyleClipVision:
    """What core Load CLIP Vision returns, reduced to what the node uses: ``image_size`` and ``encode_image``, which
    (comfy/clip_vision.py clip_preprocess) resizes only frames that are not ``size x size``, rounds to 8 bits,
    normalises with CLIP's mean/std and returns the projected ``image_embeds``."""

    def __init__(self, model, size):
        self.model, self.image_size = model, size

    def encode_image(self, image, crop=True):
        x = image.movedim(-1, 1)
        assert x.shape[2:] == (self.image_size, self.image_size), "the node must hand over CLIP-cropped frames"
        x = torch.clip(255.0 * x, 0, 255).round() / 255.0
        x = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
        with torch.no_grad():
            pooled = self.model.vision_model(pixel_values=x.float()).pooler_output
            return {"image_embeds": self.model.visual_projection(pooled)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_clip_folder(root / "clip_vision" / "tiny-clip")
    vision = write_vision_only_file(root / "clip_vision" / "tiny-vision.safetensors", seed=1)
    return root, vision


def test_loader_lists_folders_and_files_and_scores_like_the_engine(models, monkeypatch):
    root, _ = models
    monkeypatch.setattr(host, "clip_model_roots", lambda: [root / "clip_vision"])
    assert host.list_clip_models() == ["tiny-clip", "tiny-vision.safetensors"]  # not tiny-clip/model.safetensors
    (clip,) = LoadCLIPScoreModel().run("tiny-clip")
    frames, source = smooth_frames(4, 40, 40), smooth_frames(4, 40, 40, seed=5)
    out = CLIPVideoScore().run(frames, PROMPT, clip_model=clip, source_frames=source)
    consistency, text, similarity, chart = out["result"]
    want = score_video(load_clip_model(root / "clip_vision" / "tiny-clip"), frames, PROMPT, source)
    assert (consistency, text, similarity) == pytest.approx(
        (want.frame_consistency, want.text_alignment, want.source_similarity), abs=1e-6)
    assert chart.shape == (1, 400, 640, 3) and 0 <= chart.min() and chart.max() <= 1
    assert out["ui"]["clip_scores"][0]["text_per_frame"] == pytest.approx(want.text_per_frame, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="must be a name listed"):
        host.clip_model_path("../secrets")
    long = CLIPVideoScore().run(frames, " ".join(["bear"] * 100), clip_model=clip)
    assert "tokens; CLIP reads the first" in long["ui"]["text"][0]  # said in the output, not only the console
    assert "text" not in out["ui"]


def test_clip_vision_serves_the_image_metrics(models):
    """With a CLIP_VISION connected, consistency and source similarity are its numbers (equal to scoring with the
    same weights through the engine); text alignment stays the two-tower model's own."""
    root, vision = models
    clip = load_clip_model(root / "clip_vision" / "tiny-clip")
    cv = ComfyStyleClipVision(vision, 32)
    frames, source = smooth_frames(5, 48, 36), smooth_frames(5, 48, 36, seed=2)
    consistency, text, similarity, _ = CLIPVideoScore().run(frames, PROMPT, clip_model=clip, clip_vision=cv,
                                                            source_frames=source)["result"]
    by_vision = score_video(load_clip_model(root / "clip_vision" / "tiny-vision.safetensors"), frames, None, source)
    by_clip = score_video(clip, frames, PROMPT)
    assert consistency == pytest.approx(by_vision.frame_consistency, abs=1e-6)
    assert similarity == pytest.approx(by_vision.source_similarity, abs=1e-6)
    assert text == pytest.approx(by_clip.text_alignment, abs=1e-5)
    assert abs(by_vision.frame_consistency - by_clip.frame_consistency) > 1e-6  # two different models
    only_vision = CLIPVideoScore().run(frames, "", clip_vision=cv)["result"]
    assert only_vision[0] == pytest.approx(by_vision.frame_consistency, abs=1e-6) and math.isnan(only_vision[1])
    with pytest.raises(ValueError, match="no CLIP model"):
        CLIPVideoScore().run(frames, PROMPT)
    with pytest.raises(ValueError, match="clip_vision must be a CLIP_VISION"):
        CLIPVideoScore().run(frames, PROMPT, clip_vision=object())
    with pytest.raises(ValueError, match="prompt must be the edited prompt"):
        CLIPVideoScore().run(frames, "", clip_model=clip)


def test_chart_marks_where_the_video_drifts():
    from tunevideo.modules.evaluation.clip_score import VideoScore

    score = VideoScore(frames=4, frame_consistency=0.9, consecutive=[0.99, 0.5, 0.98],
                       text_alignment=25.0, text_per_frame=[26.0, 27.0, 20.0, 27.0])
    chart = video_chart(score)[0]
    red = ((chart[..., 0] > 0.8) & (chart[..., 1] < 0.3) & (chart[..., 2] < 0.3)).nonzero()
    assert len(red) > 0 and chart.shape == (400, 640, 3)
    xs = red[:, 1].float()
    # both minima (frame 2 of the CLIP score, pair 1-2 of the consecutive cosine) lie in the middle of the x range
    assert 0.3 * 640 < xs.min() and xs.max() < 0.95 * 640


def _write_edit_set(folder, tmp_frames):
    """Two methods x two videos: mp4, webp, a folder of PNG frames; a source clip with stride."""
    folder.mkdir()
    source = smooth_frames(8, 48, 64, seed=9)
    write_video(source, folder / "source.mp4", fps=8)
    a = [smooth_frames(4, 48, 64, seed=s) for s in (1, 2)]
    b = [smooth_frames(4, 48, 64, seed=s) for s in (3, 4)]
    write_video(a[0], folder / "a0.mp4", fps=8)
    write_video(a[1], folder / "a1.webp", fps=8)
    write_video(b[0], folder / "b0.gif", fps=8)
    (folder / "b1").mkdir()
    for i, f in enumerate(b[1]):
        Image.fromarray((f * 255).round().byte().numpy()).save(folder / "b1" / f"{i:03d}.png")
    tmp_frames["b1"] = b[1]
    entries = [
        {"video": "a0.mp4", "prompt": PROMPT, "method": "Tune-A-Video", "source": "source.mp4", "source_stride": 2},
        {"video": "a1.webp", "prompt": "a cat is skiing", "method": "Tune-A-Video", "source": "source.mp4",
         "source_start": 1, "source_stride": 2},
        {"video": "b0.gif", "prompt": PROMPT, "method": "Video-P2P", "source": "source.mp4", "source_stride": 2},
        {"video": "b1", "prompt": "a cat is skiing", "method": "Video-P2P", "source": "source.mp4",
         "source_start": 1, "source_stride": 2, "name": "frames-folder"},
    ]
    (folder / "manifest.json").write_text(json.dumps({"edits": entries}))
    return entries


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_evaluate_writes_paper_tables_and_never_overwrites(models, tmp_path, capsys):
    root, _ = models
    clip_dir = root / "clip_vision" / "tiny-clip"
    raw = {}
    _write_edit_set(tmp_path / "edits", raw)
    assert cli.main(["evaluate", "--clip", str(clip_dir), "--edits", str(tmp_path / "edits"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    report = tmp_path / "edits" / "clip_eval_00001"
    assert result["report"] == str(report)
    assert sorted(p.name for p in report.iterdir()) == ["edits.csv", "plot.png", "table.csv", "table.md"]
    edits = _read_csv(report / "edits.csv")
    assert [e["method"] for e in edits] == ["Tune-A-Video"] * 2 + ["Video-P2P"] * 2
    # The lossless frame folder scores exactly as the engine scores the frames themselves (source: frames 1, 3, 5, 7).
    clip = load_clip_model(clip_dir)
    source = read_frames(tmp_path / "edits" / "source.mp4", start=1, stride=2, count=4)
    want = score_video(clip, raw["b1"], "a cat is skiing", source)
    got = edits[3]
    assert got["name"] == "frames-folder"
    assert float(got["frame_consistency"]) == pytest.approx(want.frame_consistency, abs=1e-6)
    assert float(got["text_alignment"]) == pytest.approx(want.text_alignment, abs=1e-4)
    assert float(got["source_similarity"]) == pytest.approx(want.source_similarity, abs=1e-6)
    # Table rows: mean and sample std over each method's videos, x 100.
    table = _read_csv(report / "table.csv")
    assert [t["method"] for t in table] == ["Tune-A-Video", "Video-P2P"]
    for t, mine in zip(table, (edits[:2], edits[2:]), strict=True):
        values = [100 * float(e["frame_consistency"]) for e in mine]
        assert float(t["frame_consistency_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert float(t["frame_consistency_std"]) == pytest.approx(statistics.stdev(values), abs=1e-9)
        texts = [float(e["text_alignment"]) for e in mine]
        assert float(t["text_alignment_mean"]) == pytest.approx(statistics.fmean(texts), abs=1e-9)
        assert t["videos"] == "2"
    md = (report / "table.md").read_text()
    assert "| Method | Frame consistency ↑ | Text alignment ↑ | Source similarity ↑ | Videos |" in md
    assert f"| Video-P2P | {float(table[1]['frame_consistency_mean']):.2f} ± " in md
    assert Image.open(report / "plot.png").size == (720, 480)
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    assert cli.main(["evaluate", "--clip", str(clip_dir), "--edits", str(tmp_path / "edits" / "manifest.json"),
                     "--device", "cpu", "--max-frames", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["report"].endswith("clip_eval_00002")
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before  # the first report is untouched
    assert _read_csv(tmp_path / "edits" / "clip_eval_00002" / "edits.csv")[0]["frames"] == "3"


def test_manifest_csv_and_errors(tmp_path):
    raw = {}
    entries = _write_edit_set(tmp_path / "set", raw)
    fields = ["video", "prompt", "method", "source", "source_start", "source_stride", "name"]
    with open(tmp_path / "set" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(entries)
    from_csv = load_manifest(tmp_path / "set" / "manifest.csv")
    assert from_csv == load_manifest(tmp_path / "set" / "manifest.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "set/a0.mp4", "method": "x"}]))
    with pytest.raises(ValueError, match="edit 0 has no 'prompt'"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "missing.json").write_text(json.dumps([{"video": "nope.mp4", "prompt": "p", "method": "x"}]))
    with pytest.raises(FileNotFoundError, match="edit 0: video .*nope.mp4 not found"):
        load_manifest(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no manifest.json or manifest.csv"):
        load_manifest(tmp_path)
