"""Tiny random CLIPs for the evaluation tests (built from configs; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
from tunevideo.modules.convert.text_encoder import write_byte_tokenizer

# 64-wide towers so that the single-file loader's "heads = width / 64" convention holds.
TINY_TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, vocab_size=514,
                 max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
TINY_VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, image_size=32,
                   patch_size=8)


def tiny_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=16)).eval()


def write_clip_folder(folder: Path, seed: int = 0) -> CLIPModel:
    """A transformers CLIPModel folder (config.json + model.safetensors) with the byte tokenizer beside it."""
    model = tiny_clip(seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    write_byte_tokenizer(folder)
    return model


def write_vision_only_file(path: Path, seed: int = 0) -> CLIPVisionModelWithProjection:
    """An image-only CLIP vision file, keys as ComfyUI's models/clip_vision files have them."""
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION,
                                                     projection_dim=16).vision_config).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def smooth_frames(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[n, height, width, 3]`` in 0..1: a low-frequency pattern drifting over time (a plausible video)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g)
    frames = []
    for i in range(n):
        shifted = torch.roll(base, shifts=i % 4, dims=-1) * (1 - 0.1 * i / max(n, 1))
        frames.append(torch.nn.functional.interpolate(shifted, size=(height, width), mode="bilinear"))
    return torch.cat(frames).permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def direct_features(model, pixel_values=None, input_ids=None) -> torch.Tensor:
    """transformers' own get_image_features / get_text_features (a tensor in 4.x, an output object in 5.x)."""
    with torch.no_grad():
        out = (model.get_image_features(pixel_values=pixel_values) if pixel_values is not None
               else model.get_text_features(input_ids=input_ids))
    return out if torch.is_tensor(out) else out.pooler_output
