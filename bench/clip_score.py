"""CLIP scoring cost (Tune-A-Video Sec. 5 metrics) with a ViT-L/14-size CLIP (random weights, built from config).

Prints the model size, FLOPs per frame (image tower at 224 px) and per prompt, preprocessing time (PIL, CPU),
frames per second of the whole score (preprocess + image tower + text tower + metrics), achieved TFLOP/s, peak
memory, the time to load the model from a transformers folder, and the cost of scoring a 24-frame video relative to
a Tune-A-Video edit (FLOPs from bench/tune_a_video.py, the paper's setting).

    python bench/clip_score.py                              # CPU, 8 frames 512x512, fp32
    python bench/clip_score.py --device cuda --frames 24    # GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import count_flops, describe, peak_memory_gib, reset_peak, sync, timed
from transformers import CLIPConfig, CLIPModel
from tunevideo.modules.convert.text_encoder import write_byte_tokenizer
from tunevideo.modules.evaluation.clip_files import load_clip_model
from tunevideo.modules.evaluation.clip_score import ClipScoreModel, image_embeddings, preprocess, score_video

# OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14 config.json).
VIT_L14 = {"text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77},
           "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                             "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
           "projection_dim": 768}
# Tune-A-Video edit in the paper's setting (SD1.5, 24 frames 512x512), from bench/tune_a_video.py / README:
# one tuning step of the tune-a-video-reference preset is 67.3 TFLOP; 500 steps. Inversion and sampling (50 + 50
# steps, guided) add more, so this is a lower bound on the edit's FLOPs.
TAV_EDIT_FLOPS = 500 * 67.3e12
H100_FP32 = 67e12  # H100 SXM dense FP32 (no tensor cores; PyTorch's default matmul precision)


def build(device: str) -> ClipScoreModel:
    torch.manual_seed(0)
    with torch.device(device):
        model = CLIPModel(CLIPConfig(**VIT_L14)).eval().requires_grad_(False)
    tok = tempfile.TemporaryDirectory()
    from tunevideo.modules.convert.text_encoder import load_tokenizer

    tokenizer = load_tokenizer(write_byte_tokenizer(tok.name))
    model.config.text_config.eos_token_id = tokenizer.eos_token_id
    model.text_model.eos_token_id = tokenizer.eos_token_id
    return ClipScoreModel(model, tokenizer, "random ViT-L/14")


def load_time(clip: ClipScoreModel) -> float:
    """Seconds to load the model from a transformers folder (config.json + model.safetensors, fp32, ~1.7 GB)."""
    with tempfile.TemporaryDirectory() as tmp:
        clip.model.to("cpu").save_pretrained(tmp, safe_serialization=True)
        write_byte_tokenizer(tmp)
        t0 = time.perf_counter()
        load_clip_model(Path(tmp))
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-load", action="store_true", help="skip the model-loading measurement (writes ~1.7 GB)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    clip = build(a.device)
    params = sum(p.numel() for p in clip.model.parameters())
    print(f"device: {describe(a.device)}; built ViT-L/14 CLIP ({params / 1e6:.0f}M parameters, fp32) in "
          f"{time.perf_counter() - t0:.1f}s")
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(a.frames, a.height, a.width, 3, generator=g)
    prompt = "mickey mouse is skiing on the snow"

    one = preprocess(frames[:1]).to(a.device)
    image_flops = count_flops(lambda: image_embeddings(clip, one))
    text_flops = count_flops(lambda: score_video(clip, frames[:2], prompt)) - 2 * image_flops
    pre = timed(lambda: preprocess(frames), "cpu", a.repeats) / a.frames
    pixels = preprocess(frames).to(a.device)
    tower = timed(lambda: image_embeddings(clip, pixels), a.device, a.repeats) / a.frames
    reset_peak(a.device)
    total = timed(lambda: score_video(clip, frames, prompt), a.device, a.repeats)
    sync(a.device)
    peak = peak_memory_gib(a.device)
    print(f"FLOPs: image tower {image_flops / 1e9:.1f} GFLOP/frame (224 px), text tower {text_flops / 1e9:.2f} "
          f"GFLOP/prompt")
    print(f"preprocess (PIL, CPU, {a.width}x{a.height} -> 224): {pre * 1e3:.1f} ms/frame")
    print(f"image tower: {tower * 1e3:.1f} ms/frame = {image_flops / tower / 1e12:.2f} TFLOP/s")
    print(f"score_video ({a.frames} frames + prompt): {total:.2f} s = {a.frames / total:.1f} frames/s; "
          f"peak memory {peak:.2f} GiB ({'allocated' if a.device.startswith('cuda') else 'process RSS'})")
    if not a.no_load:
        print(f"load from a transformers folder (fp32 safetensors, CPU): {load_time(clip):.1f} s")
    video = 24 * image_flops + text_flops
    est = video / (0.5 * H100_FP32)
    print(f"24-frame video: {video / 1e12:.2f} TFLOP = {100 * video / TAV_EDIT_FLOPS:.4f}% of a Tune-A-Video edit's "
          f"FLOPs (>= {TAV_EDIT_FLOPS / 1e15:.1f} PFLOP). ESTIMATE for one H100 (not measured): {est:.2f} s at 50% "
          f"of dense FP32 peak, plus CPU preprocessing {24 * pre:.2f} s (this machine)")


if __name__ == "__main__":
    main()
