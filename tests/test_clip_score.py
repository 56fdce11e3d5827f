"""CLIP metrics (Tune-A-Video Sec. 5) equal a direct computation with transformers on tiny random CLIPs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_helpers import direct_features, smooth_frames, tiny_clip, write_clip_folder, write_vision_only_file
from safetensors.torch import save_file
from tunevideo.modules.evaluation.clip_files import load_clip_model
from tunevideo.modules.evaluation.clip_score import ClipModelError, preprocess, score_embeddings, score_video

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample" / "man-skiing-16f-128.mp4"
SHARED_CLIP = ROOT.parent / "shared" / "data" / "car-turn.mp4"
PROMPT = "a jeep car is moving on the road"


def _processor(size=224):
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x: the slow processor is PIL-based
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _real_frames(path: Path, n: int = 3) -> torch.Tensor:
    import av

    with av.open(str(path)) as c:
        arrays = [f.to_ndarray(format="rgb24") for f in itertools.islice(c.decode(video=0), n)]
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model = write_clip_folder(folder)
    return folder, model


def _direct(model, tokenizer, frames, prompt, size=32):
    """The metrics written out with transformers alone: CLIPImageProcessor, get_*_features, cosines."""
    arrays = [(f * 255).round().to(torch.uint8).numpy() for f in frames]
    pixels = _processor(size)(images=arrays, return_tensors="pt")["pixel_values"]
    img = F.normalize(direct_features(model, pixel_values=pixels).double(), dim=-1)
    ids = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    txt = F.normalize(direct_features(model, input_ids=ids).double(), dim=-1)[0]
    n = len(img)
    pairs = [float(img[i] @ img[j]) for i in range(n) for j in range(i + 1, n)]
    return sum(pairs) / len(pairs), float((100 * img @ txt).mean())


@pytest.mark.parametrize("crop", [(None, None), (96, 128), (128, 72)], ids=["square", "portrait", "landscape"])
def test_preprocessing_equals_clip_image_processor_on_real_frames(crop):
    """Our preprocessing vs transformers' CLIPImageProcessor (PIL bicubic, shortest side 224, centre crop, mean/std)
    on real video frames, up- and downscaled, square and not: equal to float32 rounding (max |diff| < 1e-5)."""
    sources = [_real_frames(SAMPLE)] + ([_real_frames(SHARED_CLIP)] if SHARED_CLIP.is_file() else [])
    for frames in sources:
        h, w = crop
        frames = frames[:, :h, :w] if h else frames
        ours = preprocess(frames)
        arrays = [(f * 255).round().to(torch.uint8).numpy() for f in frames]
        ref = _processor()(images=arrays, return_tensors="pt")["pixel_values"]
        assert ours.shape == ref.shape == (len(frames), 3, 224, 224)
        assert (ours - ref).abs().max() < 1e-5


def test_metrics_equal_transformers(clip_folder):
    folder, model = clip_folder
    clip = load_clip_model(folder)
    frames = smooth_frames(5, 40, 56)
    score = score_video(clip, frames, PROMPT)
    consistency, alignment = _direct(model, clip.tokenizer, frames, PROMPT)
    assert score.frame_consistency == pytest.approx(consistency, abs=1e-5)
    assert score.text_alignment == pytest.approx(alignment, abs=1e-3)  # 100 x cosine
    assert len(score.text_per_frame) == 5 and len(score.consecutive) == 4
    assert score.consecutive[0] == pytest.approx(
        float(F.cosine_similarity(*[direct_features(model, pixel_values=preprocess(frames[i:i + 1], 32))
                                    for i in (0, 1)])), abs=1e-5)


def test_identical_frames_are_perfectly_consistent(clip_folder):
    clip = load_clip_model(clip_folder[0])
    frame = smooth_frames(1, 48, 48)
    score = score_video(clip, frame.expand(6, -1, -1, -1), None)
    assert score.frame_consistency == pytest.approx(1.0, abs=1e-6)
    assert all(c == pytest.approx(1.0, abs=1e-6) for c in score.consecutive)
    assert score.text_alignment is None


def test_text_alignment_is_invariant_to_frame_order(clip_folder):
    clip = load_clip_model(clip_folder[0])
    frames = smooth_frames(6, 36, 36, seed=3)
    order = torch.tensor([4, 1, 5, 0, 3, 2])
    a, b = score_video(clip, frames, PROMPT), score_video(clip, frames[order], PROMPT)
    # Equal up to float32 rounding of the batched forward (a different batch order sums in another order).
    assert b.text_alignment == pytest.approx(a.text_alignment, abs=1e-5)
    assert b.frame_consistency == pytest.approx(a.frame_consistency, abs=1e-7)  # all pairs: order-free too
    assert b.text_per_frame == pytest.approx([a.text_per_frame[i] for i in order], abs=1e-5)


def test_source_similarity(clip_folder):
    clip = load_clip_model(clip_folder[0])
    frames = smooth_frames(4, 32, 32)
    same = score_video(clip, frames, PROMPT, source=frames.clone())
    assert same.source_similarity == pytest.approx(1.0, abs=1e-6)
    other = score_video(clip, frames, PROMPT, source=frames.flip(2))
    assert other.source_similarity < 1.0 - 1e-4
    with pytest.raises(ValueError, match="source_frames has 3 frames but frames has 4"):
        score_video(clip, frames, PROMPT, source=frames[:3])


def test_bad_inputs_give_clear_errors(clip_folder, tmp_path):
    clip = load_clip_model(clip_folder[0])
    with pytest.raises(ValueError, match="1 frame.*at least 2"):
        score_video(clip, smooth_frames(1, 32, 32), PROMPT)
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="prompt must be the edited prompt"):
            score_video(clip, smooth_frames(2, 32, 32), empty)
    with pytest.raises(ValueError, match=r"IMAGE \[frames, height, width, 3\]"):
        score_video(clip, torch.rand(2, 32, 32), PROMPT)
    vision_only = tmp_path / "vision-only.safetensors"
    write_vision_only_file(vision_only)
    image_only = load_clip_model(vision_only)
    assert not image_only.has_text
    assert score_video(image_only, smooth_frames(3, 32, 32), None).frame_consistency > 0  # consistency works
    with pytest.raises(ClipModelError, match="no text tower.*models/clip_vision"):
        score_video(image_only, smooth_frames(3, 32, 32), PROMPT)
    with pytest.raises(ValueError, match="at least 2 frames"):
        score_embeddings(torch.randn(1, 16))


def test_single_file_layouts_equal_the_folder(clip_folder, tmp_path, monkeypatch):
    """model.safetensors on its own (transformers keys) and the OpenAI key layout give the folder's scores."""
    folder, model = clip_folder
    frames, want = smooth_frames(3, 32, 48), score_video(load_clip_model(folder), smooth_frames(3, 32, 48), PROMPT)
    single = tmp_path / "single" / "clip.safetensors"
    single.parent.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single))
    got = score_video(load_clip_model(single, tokenizer_dir=folder), frames, PROMPT)
    assert got.frame_consistency == pytest.approx(want.frame_consistency, abs=1e-6)
    assert got.text_per_frame == pytest.approx(want.text_per_frame, abs=1e-4)
    openai = tmp_path / "openai.safetensors"
    save_file(_to_openai_keys(model.state_dict()), str(openai))
    got = score_video(load_clip_model(openai, tokenizer_dir=folder), frames, PROMPT)
    assert got.frame_consistency == pytest.approx(want.frame_consistency, abs=1e-6)
    assert got.text_per_frame == pytest.approx(want.text_per_frame, abs=1e-4)
    from tunevideo.modules.convert import text_encoder

    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(text_encoder, "installed_bpe_vocabulary", lambda: None)
    no_tok = load_clip_model(single)  # no tokenizer beside it, none given or installed -> clear error on text
    if no_tok.tokenizer is None:
        with pytest.raises(ClipModelError, match="no tokenizer was found"):
            score_video(no_tok, frames, PROMPT)


def test_refuses_pickles_and_text_only_files(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    tiny_clip().config.save_pretrained(str(folder))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ClipModelError, match="pickles are never loaded"):
        load_clip_model(folder)
    with pytest.raises(ClipModelError, match="never loaded"):
        load_clip_model(folder / "pytorch_model.bin")
    text_only = tmp_path / "clip_l.safetensors"  # what ComfyUI's models/clip holds: a text encoder
    sd = tiny_clip().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("text_model.")}, str(text_only))
    with pytest.raises(ClipModelError, match="no CLIP image tower"):
        load_clip_model(text_only)


def _to_openai_keys(sd: dict) -> dict:
    """transformers CLIPModel keys -> OpenAI CLIP keys (the inverse of the loader's conversion, for the test)."""
    out = {}
    layer_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    for tower, prefix in (("vision_model", "visual."), ("text_model", "")):
        n = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{tower}.encoder.layers."))
        for i in range(n):
            src = f"{tower}.encoder.layers.{i}."
            dst = f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"]
                                                               for p in "qkv"])
                for a, b in layer_names.items():
                    out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
    emb = "vision_model.embeddings."
    out.update({"visual.class_embedding": sd[emb + "class_embedding"],
                "visual.conv1.weight": sd[emb + "patch_embedding.weight"],
                "visual.positional_embedding": sd[emb + "position_embedding.weight"],
                "visual.proj": sd["visual_projection.weight"].T, "text_projection": sd["text_projection.weight"].T,
                "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
                "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
                "logit_scale": sd["logit_scale"]})
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}
