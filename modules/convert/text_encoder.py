"""Stable Diffusion text encoders and tokenizers, from LDM checkpoint keys, without downloads.

- SD1: OpenAI CLIP ViT-L/14 text encoder (Radford et al., 2021), ``cond_stage_model.transformer.[text_model.]*``,
  already in Hugging Face ``CLIPTextModel`` naming; conditions on the last layer after the final layer norm.
- SD2: OpenCLIP ViT-H/14 (Cherti et al., 2023), ``cond_stage_model.model.*`` with fused ``attn.in_proj_weight``,
  converted to a ``CLIPTextModel`` with ``gelu``; conditions on the penultimate layer + final layer norm.
- Tokenizers come from a folder with ``vocab.json`` + ``merges.txt`` (e.g. ComfyUI's ``comfy/sd1_tokenizer``), or,
  for the built-in tiny model, from a byte-level vocabulary generated on the fly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .clip_vocab import installed_bpe_vocabulary, write_clip_tokenizer
from .state_dict import assign_weights, check_no_meta, describe_keys, strip_prefix
from .unet import UnsupportedModelError

logger = logging.getLogger(__name__)

SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD1_TEXT_WRITE_PREFIX = SD1_TEXT_PREFIX + "text_model."
SD2_TEXT_PREFIX = "cond_stage_model.model."


class TokenizerNotFoundError(FileNotFoundError):
    """No CLIP tokenizer files were given or found."""


def _text_core(model: CLIPTextModel) -> torch.nn.Module:
    """transformers 4.x nests the modules under ``text_model``; 5.x keeps them on the model itself."""
    return getattr(model, "text_model", model)


def _model_key(model: CLIPTextModel, bare: str) -> str:
    return f"text_model.{bare}" if hasattr(model, "text_model") else bare


def _clip_config(bare: Mapping[str, torch.Tensor], act: str, num_heads: int | None, name: str) -> CLIPTextConfig:
    need = ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight", "encoder.layers.0.mlp.fc1"
            ".weight", "final_layer_norm.weight")
    missing = [k for k in need if k not in bare]
    if missing:
        raise UnsupportedModelError(f"{name}: text encoder lacks {missing[0]} (found {describe_keys(list(bare))})")
    vocab, hidden = bare["embeddings.token_embedding.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in bare if k.startswith("encoder.layers."))
    if num_heads is None:
        if hidden % 64:
            raise UnsupportedModelError(f"{name}: text width {hidden} is not a multiple of the 64-wide CLIP heads")
        num_heads = hidden // 64
    return CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers, num_attention_heads=num_heads,
        intermediate_size=int(bare["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_position_embeddings=int(bare["embeddings.position_embedding.weight"].shape[0]), hidden_act=act,
        bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1, pad_token_id=int(vocab) - 1,
    )


def _build_text(bare: dict[str, torch.Tensor], act: str, dtype: torch.dtype | None, num_heads: int | None,
                name: str, ignorable: tuple[str, ...]) -> CLIPTextModel:
    config = _clip_config(bare, act, num_heads, name)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    targets = set(model.state_dict())
    values, missing = {}, []
    for key in targets:
        b = key.removeprefix("text_model.")
        if b not in bare:
            missing.append(b)
            continue
        values[key] = bare[b].to(dtype) if dtype is not None else bare[b]
    if missing:
        raise UnsupportedModelError(f"{name}: text encoder lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    unused = sorted(k for k in set(bare) - {k.removeprefix("text_model.") for k in targets}
                    if not k.endswith(ignorable))
    if unused:
        logger.warning("%s: ignoring %d unexpected text-encoder keys, e.g. %s", name, len(unused), unused[:3])
    assign_weights(model, values, name)
    core = _text_core(model)
    core.embeddings.position_ids = torch.arange(config.max_position_embeddings).unsqueeze(0)  # non-persistent buffer
    check_no_meta(model, name)
    return model.eval()


def text_encoder_from_ldm(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                          num_heads: int | None = None, name: str = "state dict") -> CLIPTextModel:
    """SD1 text encoder: ``cond_stage_model.transformer.[text_model.]*`` -> ``CLIPTextModel`` (``quick_gelu``).

    The config (width, layers, heads = width / 64 unless ``num_heads``, MLP width, vocab, positions) comes from the
    weight shapes.
    """
    sd = strip_prefix(state_dict, SD1_TEXT_PREFIX)
    bare = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return _build_text(bare, "quick_gelu", dtype, num_heads, name, ("position_ids",))


def text_encoder_to_ldm(model: CLIPTextModel, prefix: str = SD1_TEXT_WRITE_PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of :func:`text_encoder_from_ldm`: SD1 checkpoint keys (``...transformer.text_model.*``)."""
    return {prefix + k.removeprefix("text_model."): v for k, v in model.state_dict().items()}


_OPEN_CLIP_LAYER = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.",
                    "mlp.c_proj.": "mlp.fc2.", "attn.out_proj.": "self_attn.out_proj."}
_OPEN_CLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")


def open_clip_to_hf_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text-transformer keys (prefix ``cond_stage_model.model.`` optional) -> bare ``CLIPTextModel`` keys.

    The fused ``attn.in_proj_weight`` ``[3D, D]`` (rows: q, k, v, as ``torch.nn.MultiheadAttention`` uses them) is
    split into ``q_proj``, ``k_proj``, ``v_proj``; ``text_projection`` and the vision tower are not needed and dropped.
    """
    sd = strip_prefix(state_dict, SD2_TEXT_PREFIX)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final."):]] = value
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            pre, rest = f"encoder.layers.{m[1]}.", m[2]
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if value.shape[0] % 3:
                    raise UnsupportedModelError(f"OpenCLIP {key} has {value.shape[0]} rows, not 3 x width")
                for proj, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{pre}self_attn.{proj}_proj.{kind}"] = part.clone()
                continue
            for old, new in _OPEN_CLIP_LAYER.items():
                if rest.startswith(old):
                    out[pre + new + rest[len(old):]] = value
                    break
            else:
                out["unmapped." + key] = value
        elif key.startswith(_OPEN_CLIP_IGNORED) or key.startswith("visual."):
            continue
        else:
            out["unmapped." + key] = value
    return out


def text_encoder_from_open_clip(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                                num_heads: int | None = None, name: str = "state dict") -> CLIPTextModel:
    """SD2 text encoder: OpenCLIP ``cond_stage_model.model.*`` -> ``CLIPTextModel`` with exact ``gelu``.

    Heads default to width / 64 (ViT-H/14: 1024 / 64 = 16). Use ``text_layer=-2`` with it (see :func:`encode_tokens`).
    """
    return _build_text(open_clip_to_hf_keys(state_dict), "gelu", dtype, num_heads, name, ())


# --------------------------------------------------------------------------------------------------------- tokenizers
def byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2 / CLIP) uses for the bytes 0..255, in CLIP's vocab order:
    printable Latin-1 bytes map to themselves, the other 68 bytes to code points 256, 257, ..."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    kept = set(keep)
    rest = [b for b in range(256) if b not in kept]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_byte_tokenizer(folder: str | os.PathLike) -> Path:
    """Write a CLIP-compatible byte-level tokenizer (``vocab.json`` + ``merges.txt``) to ``folder``.

    Vocab (514 entries): the 256 byte characters, the same with ``</w>`` (end of word), ``<|startoftext|>`` (512) and
    ``<|endoftext|>`` (513); no merges, so every character is one token. It is the tiny model's tokenizer.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _from_folder(folder: Path, kind: str) -> CLIPTokenizer:
    # OpenCLIP (SD2) pads with token 0 ("!"), OpenAI CLIP (SD1) with <|endoftext|>.
    extra = {"pad_token": "!"} if kind == "sd2" else {}
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=77, **extra)


def byte_tokenizer(kind: str = "sd1") -> CLIPTokenizer:
    """The built-in byte-level tokenizer (see :func:`write_byte_tokenizer`), generated into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="tunevideo-tok-") as tmp:
        return _from_folder(write_byte_tokenizer(tmp), kind)


def _tokenizer_files_ok(folder: Path) -> bool:
    bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return bpe or (folder / "tokenizer.json").is_file()


_HOW_TO_TOKENIZER = ("pass tokenizer_dir=<folder with vocab.json and merges.txt> (CLI: --tokenizer), e.g. ComfyUI's "
                     "comfy/sd1_tokenizer, or set COMFYUI_PATH to a ComfyUI checkout")


def load_tokenizer(tokenizer_dir: str | os.PathLike | None = None, kind: str = "sd1",
                   tiny: bool = False) -> CLIPTokenizer:
    """The CLIP BPE tokenizer, from local files only.

    Order: the built-in byte tokenizer for tiny models; ``tokenizer_dir``; ``$COMFYUI_PATH/comfy/sd1_tokenizer``
    (SD1 and SD2 share that vocabulary); an installed copy of CLIP's BPE file (open_clip's,
    :mod:`.clip_vocab`). Raises :class:`TokenizerNotFoundError` saying how to provide one.
    """
    if tiny:
        if tokenizer_dir is not None:
            logger.info("tiny built-in model: using its built-in byte tokenizer, not %s", tokenizer_dir)
        return byte_tokenizer(kind)
    if tokenizer_dir is not None:
        folder = Path(tokenizer_dir)
        if not folder.is_dir() or not _tokenizer_files_ok(folder):
            raise TokenizerNotFoundError(f"tokenizer_dir {folder} is not a folder with vocab.json and merges.txt "
                                         f"(or tokenizer.json)")
        return _from_folder(folder, kind)
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy:
        folder = Path(comfy) / "comfy" / "sd1_tokenizer"
        if folder.is_dir() and _tokenizer_files_ok(folder):
            return _from_folder(folder, kind)
        raise TokenizerNotFoundError(f"COMFYUI_PATH is set but {folder} has no vocab.json + merges.txt; "
                                     f"{_HOW_TO_TOKENIZER}")
    installed = installed_bpe_vocabulary()
    if installed is not None:  # e.g. open_clip's copy: no ComfyUI checkout needed
        logger.info("tokenizer: the CLIP BPE vocabulary installed at %s", installed)
        with tempfile.TemporaryDirectory(prefix="tunevideo-tok-") as tmp:
            return _from_folder(write_clip_tokenizer(installed, tmp), kind)
    raise TokenizerNotFoundError(f"no CLIP tokenizer available offline (no installed package ships the CLIP BPE "
                                 f"vocabulary; `pip install open_clip_torch` provides one): {_HOW_TO_TOKENIZER}")


def check_tokenizer_fits(tokenizer: Any, text_encoder: CLIPTextModel, path: Path) -> None:
    try:
        size = len(tokenizer)
    except TypeError:
        return  # a plain callable: checked per call in tokenize()
    vocab = text_encoder.config.vocab_size
    if size > vocab:
        raise ValueError(f"{path.name}: the tokenizer has {size} tokens but the text encoder only {vocab}; "
                         f"it is the wrong tokenizer for this checkpoint")


def tokenize(tokenizer: Any, prompts: Sequence[str], length: int = 77) -> torch.Tensor:
    """``input_ids`` ``[B, length]`` (int64): padded to ``length``, longer prompts truncated (end token kept)."""
    out = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    ids = out if isinstance(out, torch.Tensor) else out["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.shape != (len(prompts), length):
        raise ValueError(f"tokenizer returned input_ids of shape {tuple(ids.shape)}, expected "
                         f"({len(prompts)}, {length})")
    return ids


def token_windows(tokenizer: Any, prompt: str, length: int = 77) -> torch.Tensor:
    """``input_ids`` ``[k, length]`` for a prompt of any length, as ComfyUI's CLIP Text Encode frames it: the prompt's
    tokens split into windows of ``length - 2``, each between the start and end tokens and padded to ``length``
    (``k = 1`` up to 75 tokens; an empty prompt is one window). Encoded window by window and joined along the tokens,
    a 60-word prompt gives 154 tokens, as in ComfyUI."""
    ids = list(tokenizer([prompt], padding=False, truncation=False)["input_ids"][0])
    bos, body, eos = ids[0], ids[1:-1], ids[-1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    width = length - 2
    windows = [body[i:i + width] for i in range(0, len(body), width)] or [[]]
    return torch.tensor([[bos, *w, eos] + [pad] * (width - len(w)) for w in windows], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------- encoding
def encode_tokens(text_encoder: CLIPTextModel, input_ids: torch.Tensor, text_layer: int = -1) -> torch.Tensor:
    """Text conditioning ``[B, N, D]`` from ``input_ids`` ``[B, N]``.

    ``text_layer=-1``: the last layer's output after the final layer norm (SD1). ``-2``: the penultimate layer's
    output, then the final layer norm (SD2). No attention mask: SD attends over the padding too.
    """
    vocab = text_encoder.config.vocab_size
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise ValueError(f"token ids span [{int(input_ids.min())}, {int(input_ids.max())}], outside the text "
                         f"encoder's vocabulary of {vocab}")
    device = next(text_encoder.parameters()).device
    ids = input_ids.to(device)
    with torch.no_grad():
        if text_layer == -1:
            return text_encoder(input_ids=ids).last_hidden_state
        hidden = text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[text_layer]
        return _text_core(text_encoder).final_layer_norm(hidden)
