"""Loading a CLIP for scoring from local files (no downloads, safetensors only).

Accepted layouts:

1. a **transformers folder**: ``config.json`` (``model_type`` ``clip``, or ``clip_vision_model`` for an image-only
   model), weights as ``model.safetensors`` (or sharded with ``model.safetensors.index.json``), tokenizer as
   ``vocab.json`` + ``merges.txt`` or ``tokenizer.json``; ``preprocessor_config.json`` (crop size, mean, std) is
   honoured. This is ``openai/clip-vit-large-patch14`` as the Hugging Face Hub stores it.
2. a **single ``.safetensors`` file** with transformers ``CLIPModel`` keys (``vision_model.*``, ``text_model.*``,
   ``visual_projection.weight``, ``text_projection.weight``), e.g. the folder's ``model.safetensors`` on its own, or
   an image-only file as ComfyUI's ``models/clip_vision`` holds them;
3. a **single ``.safetensors`` file** with OpenAI CLIP keys (``visual.conv1.weight``, ``visual.proj``,
   ``transformer.resblocks.*``, ``token_embedding.weight``, ``text_projection``).

Single files carry no config: it is read off the weight shapes, with OpenAI CLIP's conventions (64-wide heads,
``quick_gelu``); widths 1280 and 1664 (OpenCLIP ViT-H/ViT-g) use 16 heads and ``gelu``. For any other model use a
folder with its ``config.json``. A single file's tokenizer comes from its own folder, else ``tokenizer_dir``, else
``$COMFYUI_PATH/comfy/sd1_tokenizer`` (OpenAI CLIP ViT-L/14's vocabulary); without one, text alignment explains
what to install.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..convert.state_dict import assign_weights, check_no_meta, describe_keys
from ..convert.text_encoder import TokenizerNotFoundError, load_tokenizer, open_clip_to_hf_keys
from ..files.reader import read_header, read_safetensors
from .clip_score import CLIP_MEAN, CLIP_STD, INSTALL_HINT, ClipModelError, ClipScoreModel

logger = logging.getLogger(__name__)

_OPEN_CLIP_WIDE = {1280: 16, 1664: 16}  # OpenCLIP ViT-H/14, ViT-g/14 vision widths -> heads (gelu)


def is_clip_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_clip_model(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                    dtype: torch.dtype = torch.float32) -> ClipScoreModel:
    """A :class:`ClipScoreModel` from a transformers folder or a single ``.safetensors`` file (see module doc).

    Raises :class:`~.clip_score.ClipModelError` (a ValueError) naming the path and what is wrong; FileNotFoundError
    if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP model {path} not found")
    if path.is_dir():
        clip = _from_folder(path, tokenizer_dir)
    elif path.suffix.lower() == ".safetensors":
        clip = _from_file(path, tokenizer_dir)
    else:
        raise ClipModelError(f"{path.name}: not a CLIP folder (config.json + model.safetensors) or a .safetensors "
                             f"file; pickled checkpoints (.bin, .pt, .ckpt) are never loaded")
    clip.model.to(dtype).eval().requires_grad_(False)
    logger.info("loaded %s", clip.describe())
    return clip


# ---------------------------------------------------------------------------------------------------------- folder
def _from_folder(folder: Path, tokenizer_dir) -> ClipScoreModel:
    if not is_clip_folder(folder):
        raise ClipModelError(f"{folder} has no config.json; a CLIP folder needs config.json + model.safetensors "
                             f"(+ vocab.json, merges.txt). {INSTALL_HINT}")
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    cls = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModelWithProjection}.get(kind)
    if cls is None:
        raise ClipModelError(f"{folder}/config.json has model_type {kind!r}; expected 'clip' (both towers) or "
                             f"'clip_vision_model'")
    if not any(folder.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in folder.glob("*.bin"))) or "nothing"
        raise ClipModelError(f"{folder} has no .safetensors weights (found {found}); pickles are never loaded: "
                             f"download model.safetensors of the same model")
    model = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    vision = model.config.vision_config if kind == "clip" else model.config
    size, mean, std = _processor_settings(folder, int(vision.image_size))
    tokenizer = _tokenizer(folder, tokenizer_dir, model) if kind == "clip" else None
    return ClipScoreModel(model, tokenizer, str(folder), size, mean, std)


def _processor_settings(folder: Path, default_size: int) -> tuple[int, tuple, tuple]:
    """Crop size, mean and std from ``preprocessor_config.json`` (CLIP's when absent)."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return default_size, CLIP_MEAN, CLIP_STD
    cfg = json.loads(file.read_text())
    crop = cfg.get("crop_size", default_size)
    size = int(crop.get("height", default_size) if isinstance(crop, dict) else crop)
    shortest = cfg.get("size", {})
    shortest = shortest.get("shortest_edge", size) if isinstance(shortest, dict) else shortest
    if int(shortest) != size:
        raise ClipModelError(f"{file}: resize {shortest} differs from crop {size}; CLIP resizes the shortest side to "
                             f"the crop size (an unusual processor; not supported)")
    return size, tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))


def _tokenizer(folder: Path | None, tokenizer_dir, model):
    """The CLIP tokenizer from ``folder`` (beside the weights), else ``tokenizer_dir``, else ComfyUI's; None if
    none is found (text alignment then says how to provide one)."""
    candidates = [folder] if folder is not None else []
    for cand in candidates:
        if (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file() or (cand / "tokenizer.json").is_file():
            tokenizer_dir = cand
            break
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except TokenizerNotFoundError as e:
        logger.warning("CLIP tokenizer not found (%s); text alignment will be unavailable", e)
        return None
    vocab = int(model.config.text_config.vocab_size)
    if len(tokenizer) > vocab:
        source = tokenizer_dir or "the default places (ComfyUI's sd1_tokenizer or the installed CLIP vocabulary)"
        raise ClipModelError(f"the tokenizer from {source} has {len(tokenizer)} tokens but the text tower {vocab}; "
                             f"it is another model's tokenizer: put this model's vocab.json + merges.txt beside it")
    return tokenizer


# ----------------------------------------------------------------------------------------------------- single file
def _from_file(file: Path, tokenizer_dir) -> ClipScoreModel:
    keys = set(read_header(file, "CLIP model")[0])
    if "visual.conv1.weight" in keys or "token_embedding.weight" in keys:
        sd = openai_to_hf_keys(read_safetensors(file, "CLIP model")[0])
    elif any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        sd = read_safetensors(file, "CLIP model")[0]
    else:
        raise ClipModelError(f"{file.name} is not a CLIP in transformers or OpenAI key layout (found "
                             f"{describe_keys(sorted(keys))})")
    if "vision_model.embeddings.patch_embedding.weight" not in sd:
        raise ClipModelError(f"{file.name} has no CLIP image tower (vision_model.*): it is a text encoder; "
                             f"{INSTALL_HINT}")
    if "visual_projection.weight" not in sd:
        raise ClipModelError(f"{file.name} has no visual projection, so its image embeddings are not CLIP's shared "
                             f"space; use a CLIP model file with visual_projection.weight")
    vision = _vision_config(sd, file.name)
    has_text = "text_model.embeddings.token_embedding.weight" in sd and "text_projection.weight" in sd
    tokenizer = None
    if has_text:
        text = _text_config(sd, vision)
        config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                            projection_dim=int(sd["visual_projection.weight"].shape[0]))
        sd.setdefault("logit_scale", torch.tensor(math.log(1 / 0.07)))  # unused for scores; OpenAI's init
        model = _assign(CLIPModel, config, sd, file.name)
        tokenizer = _tokenizer(file.parent, tokenizer_dir, model)
        if tokenizer is not None:
            model.config.text_config.eos_token_id = tokenizer.eos_token_id  # pooled at the first end token
            model.text_model.eos_token_id = tokenizer.eos_token_id
    else:
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
        model = _assign(CLIPVisionModelWithProjection, vision, sd, file.name)
    return ClipScoreModel(model, tokenizer, str(file), int(vision.image_size))


def _heads_and_act(width: int, vision_width: int, tower: str) -> tuple[int, str]:
    """Heads and activation of a tower (OpenAI: 64-wide heads, quick_gelu; OpenCLIP ViT-H/g vision: 16 heads,
    their text towers 64-wide heads, both gelu)."""
    act = "gelu" if vision_width in _OPEN_CLIP_WIDE else "quick_gelu"
    if tower == "vision" and width in _OPEN_CLIP_WIDE:
        return _OPEN_CLIP_WIDE[width], act
    return max(1, width // 64), act


def _layers(sd: dict, prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _vision_config(sd: dict, name: str) -> CLIPVisionConfig:
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    width, _, p, _ = patch.shape
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ClipModelError(f"{name}: {positions} position embeddings is not a square grid plus the class token")
    heads, act = _heads_and_act(int(width), int(width), "vision")
    return CLIPVisionConfig(hidden_size=int(width), intermediate_size=int(sd["vision_model.encoder.layers.0.mlp.fc1"
                                                                            ".weight"].shape[0]),
                            num_hidden_layers=_layers(sd, "vision_model.encoder.layers."), num_attention_heads=heads,
                            image_size=int(grid * p), patch_size=int(p), hidden_act=act,
                            projection_dim=int(sd["visual_projection.weight"].shape[0]))


def _text_config(sd: dict, vision: CLIPVisionConfig) -> CLIPTextConfig:
    vocab, width = sd["text_model.embeddings.token_embedding.weight"].shape
    heads, act = _heads_and_act(int(width), vision.hidden_size, "text")
    return CLIPTextConfig(vocab_size=int(vocab), hidden_size=int(width), num_attention_heads=heads, hidden_act=act,
                          intermediate_size=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                          num_hidden_layers=_layers(sd, "text_model.encoder.layers."),
                          max_position_embeddings=int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
                          projection_dim=int(sd["text_projection.weight"].shape[0]),
                          bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1, pad_token_id=int(vocab) - 1)


def _assign(cls, config, sd: dict, name: str) -> torch.nn.Module:
    with torch.device("meta"):
        model = cls(config)
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(sd))
    if missing:
        raise ClipModelError(f"{name}: {len(missing)} weights missing for the config read off its shapes, e.g. "
                             f"{missing[:3]}; use a transformers folder with config.json")
    unused = sorted(set(sd) - wanted)
    if unused:
        logger.warning("%s: ignoring %d unexpected keys, e.g. %s", name, len(unused), unused[:3])
    assign_weights(model, {k: sd[k].float() for k in wanted}, name)
    for module in model.modules():  # non-persistent buffers are not in the file
        ids = getattr(module, "position_ids", None)
        if torch.is_tensor(ids) and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand(1, -1), persistent=False)
    check_no_meta(model, name)
    return model


def openai_to_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP keys (``visual.*``, ``transformer.resblocks.*``, ...) -> transformers ``CLIPModel`` keys.

    Fused ``attn.in_proj_weight`` rows split into q, k, v (``text_encoder.open_clip_to_hf_keys``, which OpenAI's
    layout shares); ``visual.proj [W, P]`` and ``text_projection [D, P]`` are stored transposed to ``nn.Linear``.
    """
    out: dict[str, torch.Tensor] = {}
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    for key, value in open_clip_to_hf_keys(visual).items():
        bare = key.removeprefix("unmapped.")
        if not key.startswith("unmapped."):
            out["vision_model." + key] = value
        elif bare == "proj":
            out["visual_projection.weight"] = value.T.contiguous()
        elif bare == "class_embedding":
            out["vision_model.embeddings.class_embedding"] = value
        elif bare == "conv1.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = value
        elif bare.startswith(("ln_pre.", "ln_post.")):
            layer = "pre_layrnorm" if bare.startswith("ln_pre.") else "post_layernorm"
            out[f"vision_model.{layer}.{bare.split('.', 1)[1]}"] = value
        else:
            out["unmapped.visual." + bare] = value
    text = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    if "token_embedding.weight" in text:
        out.update({"text_model." + k: v for k, v in open_clip_to_hf_keys(text).items()})
    if "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].T.contiguous()
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"].reshape(())
    return out
