"""The CLIP BPE vocabulary from a package already installed, for headless runs without a ComfyUI checkout.

CLIP (Radford et al. 2021) and OpenCLIP ship the same byte-level BPE as one gzip file, ``bpe_simple_vocab_16e6.txt.gz``
(a version line, then one merge per line). transformers' ``CLIPTokenizer`` wants ``vocab.json`` + ``merges.txt``;
:func:`write_clip_tokenizer` derives both the way CLIP's ``SimpleTokenizer`` builds its encoder: the 256 byte
symbols, the same with ``</w>``, the first 48,894 merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408
tokens, the SD1/SD2 text encoders' vocabulary size).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Packages known to ship the file, and where inside them. None of the pack's declared dependencies does.
PROVIDERS = (("open_clip", VOCAB_FILE),)
N_MERGES = 49152 - 256 - 2


def installed_bpe_vocabulary() -> Path | None:
    """The path of an installed copy of the CLIP BPE vocabulary (open_clip's), or None."""
    for package, name in PROVIDERS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            path = Path(folder) / name
            if path.is_file():
                return path
    return None


def _bytes_to_unicode() -> list[str]:
    """CLIP's printable stand-ins for the 256 byte values, in CLIP's order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(bpe_gz: str | Path, folder: str | Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` derived from CLIP's ``bpe_simple_vocab_16e6.txt.gz`` into ``folder``."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_gz}: not a CLIP BPE vocabulary (expected {N_MERGES} merge lines of two symbols)")
    symbols = _bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    return folder
