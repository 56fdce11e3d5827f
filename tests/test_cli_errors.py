"""The CLI's user errors: one line on stderr, exit status 2, no traceback (``--debug`` shows it); the tokenizer
falls back to an installed CLIP BPE vocabulary."""

from __future__ import annotations

import gzip
import itertools
import json
import os
from pathlib import Path

import pytest
from tunevideo import cli
from tunevideo.modules.convert import clip_vocab, text_encoder


def _edit_args(tmp_path, checkpoint, video=None):
    return ["tune-a-video", "--checkpoint", str(checkpoint), "--video", str(video or cli.SAMPLE_CLIP),
            "--source-prompt", "a", "--prompt", "b", "--out", str(tmp_path / "o")]


def _one_line_exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tunevideo: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def test_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    line = _one_line_exit_2(capsys, _edit_args(tmp_path, tmp_path / "missing.safetensors"), "missing.safetensors")
    assert "not found" in line


def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    _one_line_exit_2(capsys, _edit_args(tmp_path, bad), "bad.safetensors")


def test_missing_tokenizer_is_one_line_exit_2(tmp_path, capsys):
    _one_line_exit_2(capsys, _edit_args(tmp_path, tmp_path / "x.safetensors") + ["--tokenizer", str(tmp_path)],
                     "not found")  # the checkpoint check comes first
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    ckpt_missing_tok = _edit_args(tmp_path, bad) + ["--tokenizer", str(tmp_path / "nothing")]
    _one_line_exit_2(capsys, ckpt_missing_tok, "bad.safetensors")


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="bad.safetensors"):
        cli.main(["--debug"] + _edit_args(tmp_path, bad))


def _fake_bpe(path):
    """A CLIP-shaped BPE file: a version line and 48,894 merges of two byte symbols."""
    codes = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(c) for c in codes + list(range(256, 256 + 68))]  # CLIP's 256 byte symbols
    pairs = ((x, y) for x in symbols for y in symbols + [s + "</w>" for s in symbols])
    merges = [f"{x} {y}" for x, y in itertools.islice(pairs, clip_vocab.N_MERGES)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: test"] + merges + [""]))
    return path


def test_tokenizer_falls_back_to_an_installed_vocabulary(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(text_encoder, "installed_bpe_vocabulary", lambda: None)
    with pytest.raises(text_encoder.TokenizerNotFoundError, match="open_clip"):
        text_encoder.load_tokenizer()
    gz = _fake_bpe(tmp_path / clip_vocab.VOCAB_FILE)
    monkeypatch.setattr(text_encoder, "installed_bpe_vocabulary", lambda: gz)
    tok = text_encoder.load_tokenizer()
    assert len(tok) == 49408
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407


def test_installed_vocabulary_is_found_in_a_provider_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_clip_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _fake_bpe(pkg / clip_vocab.VOCAB_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(clip_vocab, "PROVIDERS", (("fake_clip_pkg", clip_vocab.VOCAB_FILE),))
    assert clip_vocab.installed_bpe_vocabulary() == pkg / clip_vocab.VOCAB_FILE


def test_the_vocabulary_run_sh_installs_gives_clips_tokenizer(monkeypatch):
    """run.sh installs open_clip_torch (--no-deps) for its CLIP BPE file: without --tokenizer or COMFYUI_PATH the
    CLI's tokenizer is CLIP's own (ids as SD1's text encoder was trained with), equal to ComfyUI's sd1_tokenizer."""
    if clip_vocab.installed_bpe_vocabulary() is None:
        pytest.skip("open_clip_torch is not installed (run.sh installs it); the fallback vocabulary is absent")
    comfy = os.environ.get("COMFYUI_PATH")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    tok = text_encoder.load_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    if comfy and (Path(comfy) / "comfy" / "sd1_tokenizer" / "vocab.json").is_file():
        folder = Path(comfy) / "comfy" / "sd1_tokenizer"
        assert json.loads((folder / "vocab.json").read_text()) == tok.get_vocab()


def test_missing_tokenizer_after_a_readable_checkpoint_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """The other 'missing tokenizer' test stops at the checkpoint check; this one reaches the tokenizer."""
    from safetensors.torch import load_file, save_file
    from tunevideo import tiny

    marked = tmp_path / "tiny.safetensors"
    tiny.write_tiny_checkpoint(marked, seed=0)
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(marked)), str(plain))  # without the tiny marker: a real tokenizer is needed
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    line = _one_line_exit_2(capsys, _edit_args(tmp_path, plain) + ["--tokenizer", str(tmp_path / "nowhere")],
                            "tokenizer")
    assert "nowhere" in line and "internal error" not in line
