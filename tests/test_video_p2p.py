"""Video-P2P attention control and prompt alignment: properties on the tiny model (reference equality lives in
test_videop2p_reference.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import CTX_DIM
from tunevideo.modules.methods.video_p2p.control import EditControl
from tunevideo.modules.methods.video_p2p.edit import p2p_sample
from tunevideo.modules.methods.video_p2p.null_text import NullTextConfig, null_text_invert, reconstruct
from tunevideo.modules.methods.video_p2p.prompt_align import (
    refinement_mapper,
    replacement_mapper,
    token_weights,
    word_mask,
    word_token_positions,
)
from tunevideo.modules.sampling.ddim import sample

# A word-level stand-in for CLIP's BPE: "Spider-Man" is three pieces, every other word one.
PIECES = {"Spider-Man": ["spider", "-", "man"]}
VOCAB: dict[str, int] = {"<start>": 0, "<end>": 1}


def tokenize(text):
    ids = [0]
    for word in text.split(" "):
        for piece in PIECES.get(word, [word.lower()]):
            ids.append(VOCAB.setdefault(piece, len(VOCAB)))
    return ids + [1]


def decode(token):
    return {v: k for k, v in VOCAB.items()}[token]


def test_word_positions_count_the_start_token_and_multi_piece_words():
    prompt = "a Spider-Man is driving a motorbike"
    assert word_token_positions(prompt, "Spider-Man", tokenize, decode) == [2, 3, 4]
    assert word_token_positions(prompt, "a", tokenize, decode) == [1, 7]
    assert word_token_positions(prompt, "car", tokenize, decode) == []
    with pytest.raises(ValueError, match="blend word 'car'"):
        word_mask(prompt, "car", tokenize, decode)
    w = token_weights(prompt, {"Spider-Man": 4.0}, tokenize, decode)
    assert w[2:5].tolist() == [4.0] * 3 and w.sum() == 77 + 3 * 3


def test_word_swap_mapper_aligns_tokens_after_a_longer_word():
    m = replacement_mapper("a man is driving", "a Spider-Man is driving", tokenize, decode)
    assert m.shape == (77, 77)
    assert torch.equal(m[2, 2:5], torch.full((3,), 1 / 3))  # "man" spreads over "spider - man"
    assert m[3, 5] == 1 and m[4, 6] == 1 and m[0, 0] == 1  # "is", "driving" follow, shifted by two
    assert torch.allclose(m.sum(1)[:75], torch.ones(75))  # every source token goes somewhere (76, 77 fall off)
    assert torch.equal(replacement_mapper("a car on the road", "a car on the rail", tokenize, decode), torch.eye(77))
    with pytest.raises(ValueError, match="same number of words"):
        replacement_mapper("a car", "a red car", tokenize, decode)


def test_refinement_mapper_marks_inserted_words():
    mapper, alphas = refinement_mapper("a rabbit is jumping", "a origami rabbit is jumping", tokenize)
    # edit tokens: <start> a origami rabbit is jumping <end>
    assert mapper[:7].tolist() == [0, 1, -1, 2, 3, 4, 5] and alphas[:7].tolist() == [1, 1, 0, 1, 1, 1, 1]
    assert mapper[7:].tolist() == list(range(7, 77)) and alphas[7:].eq(1).all()


@pytest.fixture()
def clip(tiny_video_model):
    g = torch.Generator().manual_seed(0)
    unet = tiny_video_model.network.with_attention("video-p2p")
    x0 = torch.randn(1, 4, 2, 8, 8, generator=g)
    src, edit, empty = (torch.randn(1, 77, CTX_DIM, generator=g) for _ in range(3))
    return unet, tiny_video_model.schedule, x0, src, edit, empty


def _refine_identity(**kw):
    return EditControl(word_swap=False, mapper=torch.arange(77), alphas=torch.ones(77), **kw)


def test_full_control_with_the_same_prompt_gives_the_source_video(clip):
    unet, sched, x, src, _, empty = clip
    out, masks, _ = p2p_sample(unet, sched, x, src, src, empty, _refine_identity(cross_replace_steps=1.0,
                                                                            self_replace_steps=1.0), steps=4)
    assert torch.equal(out[0], out[1]) and masks == []


def test_source_branch_is_plain_sampling_and_the_null_text_reconstruction(clip):
    """The controller edits only the edit branch: the source branch is exactly what sampling it alone gives."""
    unet, sched, x0, src, edit, empty = clip
    fn = lambda x, t, c: unet(x, t, c)  # noqa: E731
    ctl = EditControl(word_swap=True, mapper=torch.eye(77), reweight=torch.full((77,), 2.0), cross_replace_steps=1.0)
    fast, _, _ = p2p_sample(unet, sched, x0, src, edit, empty, ctl, steps=3, fast=True)
    torch.testing.assert_close(fast[:1], sample(fn, sched, x0, src, None, steps=3, cfg=1.0), rtol=0, atol=1e-4)
    inv = null_text_invert(fn, sched, x0, src, empty, NullTextConfig(steps=3, inner_steps=2))
    out, _, _ = p2p_sample(unet, sched, inv.noise, src, edit, empty, ctl, steps=3, null_text=inv.uncond)
    torch.testing.assert_close(out[:1], reconstruct(fn, sched, inv, src)[-1], rtol=0, atol=1e-4)
    plain, _, _ = p2p_sample(unet, sched, inv.noise, src, edit, empty, _refine_identity(cross_replace_steps=0.0,
                                                                                    self_replace_steps=0.0), steps=3)
    assert (out[1] - plain[1]).abs().max() > 1e-3  # the controls changed the edit branch


def test_local_blend_keeps_the_source_outside_the_mask(clip):
    unet, sched, _, src, edit, empty = clip
    x = torch.randn(1, 4, 1, 32, 32, generator=torch.Generator().manual_seed(1))  # 8x8 maps at 1/4 resolution
    src, edit = src.clone(), edit.clone()
    src[:, 3] *= 5  # a salient blend word: its attention varies over the frame
    edit[:, 3] *= 5
    word = torch.zeros(77)
    word[3] = 1
    ctl = _refine_identity(blend_src=word, blend_edit=word, blend_threshold=0.9)
    out, masks, _ = p2p_sample(unet, sched, x, src, edit, empty, ctl, steps=5)
    assert len(masks) == 4  # from step int(0.2 * 5) = 1 on
    mask = masks[-1]
    assert mask.shape == (2, 1, 1, 32, 32) and 0 < float(mask[1].mean()) < 1  # a real partial mask
    assert torch.equal(mask[0] * mask[1], mask[0])  # the edit mask covers the source mask
    assert torch.equal((out[1] - out[0]) * (1 - mask[1]), torch.zeros_like(out[1]))
    with pytest.raises(ValueError, match="divisible by 8"):
        p2p_sample(unet, sched, torch.zeros(1, 4, 2, 12, 8), src, edit, empty, ctl, steps=2)


class FakeClip:
    """What the Video-P2P nodes use of a ComfyUI CLIP: tokenize/encode_from_tokens and its BPE tokenizer."""

    def __init__(self):
        from tunevideo.modules.convert.text_encoder import byte_tokenizer

        self.bpe = byte_tokenizer()
        self.tokenizer = type("SD1Tokenizer", (), {"clip": "clip_l"})()
        self.tokenizer.clip_l = type("SDTokenizer", (), {"tokenizer": self.bpe})()
        self.table = torch.randn(len(self.bpe), CTX_DIM, generator=torch.Generator().manual_seed(5))

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text):
        from tunevideo.modules.convert.text_encoder import token_windows

        return self.table[token_windows(self.bpe, text)].reshape(1, -1, CTX_DIM)


def test_video_p2p_nodes_end_to_end_with_clear_errors(tiny_unet2d, tiny_unet_config):
    from test_nodes import fake_model
    from tunevideo import NODE_CLASS_MAPPINGS as N

    clip = FakeClip()
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    edit_args = dict(edit_prompt="a origami cat", mode="refine", cross_replace_steps=0.5, self_replace_steps=0.5,
                     blend_words="cat, cat", reweight="origami: 2", blend_threshold=0.3, cfg=7.5)
    with torch.inference_mode():
        (video,) = N["InflateUNetTemporal"]().inflate(fake_model(tiny_unet2d, tiny_unet_config), "video-p2p")
        (inverted,) = N["NullTextInvertVideo"]().run(video, latent, clip, "a cat", steps=3, fast=False)
        edited, source, attention = N["VideoP2PEdit"]().run(video, inverted, clip, **edit_args)
        (fast,) = N["NullTextInvertVideo"]().run(video, latent, clip, "a cat", steps=3, fast=True)
        N["VideoP2PEdit"]().run(video, fast, clip, **edit_args)
        tag = inverted["tunevideo_null_text"]
        assert tag["uncond"].shape == (3, 77, CTX_DIM) and tag["prompt"] == "a cat"
        assert edited["samples"].shape == source["samples"].shape == (2, 4, 8, 8)
        assert not torch.equal(edited["samples"], source["samples"])
        assert attention.shape[0] == 1 and attention.shape[-1] == 3 and attention.shape[1] == 3 * (8 + 2)
        bad = [({"edit_prompt": "a origami dog"}, "blend \\(edit\\) word 'cat'"),
               ({"mode": "word swap", "edit_prompt": "a big cat"}, "same number of words"),
               ({"reweight": "origami"}, "'word: number'"),
               ({"reweight": "origami: nan"}, "finite number"),
               ({"reweight": "origami: 1e30"}, "between -100 and 100"),
               ({"blend_threshold": float("nan")}, "blend_threshold=nan must be a finite number"),
               ({"blend_words": "cat"}, "two words"),
               ({"edit_prompt": "a (origami:1.2) cat"}, "plain text"),
               ({"edit_prompt": "a cat " + "x" * 80, "blend_words": ""}, "more than 75 tokens")]
        for change, message in bad:
            with pytest.raises(ValueError, match=message):
                N["VideoP2PEdit"]().run(video, inverted, clip, **{**edit_args, **change})
        with pytest.raises(ValueError, match="Null-Text Invert Video"):
            N["VideoP2PEdit"]().run(video, latent, clip, **edit_args)
        other = video.replace(base_hash="0" * 16)
        with pytest.raises(ValueError, match="another model"):
            N["VideoP2PEdit"]().run(other, inverted, clip, **edit_args)
