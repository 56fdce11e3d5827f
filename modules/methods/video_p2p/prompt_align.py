"""Word and token bookkeeping for prompt-to-prompt editing (Hertz et al., ICLR 2023, Sec. 3.2; Video-P2P Sec. 3.4).

Attention maps are indexed by token position in the 77-token CLIP sequence (position 0 is the start token). Editing
needs to know which positions a word occupies, and how the source prompt's positions map onto the edited prompt's:

- word swap (same number of words, some replaced): a ``[L, L]`` matrix ``M[src, tgt]``; a replaced word spread over a
  different number of tokens shares its source row equally among its target tokens;
- refinement (words added): a global alignment of the two token sequences (Needleman-Wunsch, match +1, mismatch -1,
  gap 0); each edited-prompt token takes the attention of the source token aligned with it, or keeps its own
  (``alpha = 0``) when it was inserted.

``tokenize(text) -> [ids]`` gives a prompt's token ids *with* the start and end tokens and no padding; ``decode(id)``
gives a token's text (CLIP's BPE pieces, ``</w>`` already stripped by the decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tokenize = Callable[[str], Sequence[int]]
Decode = Callable[[int], str]
MAX_TOKENS = 77


def word_token_positions(prompt: str, word: str, tokenize: Tokenize, decode: Decode) -> list[int]:
    """Positions (start token = 0) of every occurrence of ``word`` among ``prompt``'s space-separated words."""
    words = prompt.split(" ")
    targets = {i for i, w in enumerate(words) if w == word}
    pieces = [decode(t).strip("#") for t in tokenize(prompt)][1:-1]
    positions, word_index, consumed = [], 0, 0
    for pos, piece in enumerate(pieces, start=1):
        if word_index >= len(words):
            break
        consumed += len(piece)
        if word_index in targets:
            positions.append(pos)
        if consumed >= len(words[word_index]):
            word_index, consumed = word_index + 1, 0
    return positions


def replacement_mapper(source: str, edit: str, tokenize: Tokenize, decode: Decode,
                       length: int = MAX_TOKENS) -> torch.Tensor:
    """Word-swap mapper ``M`` ``[length, length]``: ``attn_edit[..., j] = sum_i attn_src[..., i] M[i, j]``.

    Raises ValueError if the prompts have different word counts (a swap replaces words one for one).
    """
    src_words, edit_words = source.split(" "), edit.split(" ")
    if len(src_words) != len(edit_words):
        raise ValueError(f"word swap needs prompts with the same number of words: {len(src_words)} in "
                         f"{source!r}, {len(edit_words)} in {edit!r}; use refinement to add words")
    swaps = [i for i, (a, b) in enumerate(zip(src_words, edit_words, strict=True)) if a != b]
    spans = [(word_token_positions(source, src_words[k], tokenize, decode),
              word_token_positions(edit, edit_words[k], tokenize, decode)) for k in swaps]
    mapper = torch.zeros(length, length)
    i = j = 0
    span = 0
    while i < length and j < length:
        if span < len(spans) and spans[span][0] and spans[span][0][0] == i:
            src_pos, tgt_pos = spans[span]
            if len(src_pos) == len(tgt_pos):
                mapper[src_pos, tgt_pos] = 1.0
            else:
                for s in src_pos:
                    mapper[s, tgt_pos] = 1.0 / len(tgt_pos)
            i, j, span = i + len(src_pos), j + len(tgt_pos), span + 1
        else:
            mapper[i, j] = 1.0
            i, j = i + 1, j + 1
    return mapper


def refinement_mapper(source: str, edit: str, tokenize: Tokenize,
                      length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper [length] long, alphas [length])``: edited token ``j`` takes source token ``mapper[j]`` where
    ``alphas[j] = 1``; inserted tokens have ``alphas[j] = 0`` (they keep their own attention)."""
    x, y = list(tokenize(source)), list(tokenize(edit))
    if len(x) > length or len(y) > length:
        raise ValueError(f"prompts must fit {length} tokens with start/end (got {len(x)} and {len(y)})")
    src_index = _align(x, y)
    mapper = torch.arange(length)
    alphas = torch.ones(length)
    mapper[:len(y)] = torch.tensor(src_index)
    alphas[:len(y)] = torch.tensor([float(s != -1) for s in src_index])
    return mapper, alphas


def _align(x: Sequence[int], y: Sequence[int]) -> list[int]:
    """For each token of ``y``, the index of the ``x`` token globally aligned with it, or -1 (inserted).

    Needleman-Wunsch with gap 0, match +1, mismatch -1; ties prefer a gap in ``x``, then in ``y``, then a pairing
    (the order the prompt-to-prompt reference resolves them in)."""
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        move[0][j] = 1
    for i in range(1, n + 1):
        move[i][0] = 2
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            move[i][j] = 1 if best == left else 2 if best == up else 3
    out = []
    i, j = n, m
    while i > 0 or j > 0:
        if move[i][j] == 3:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif move[i][j] == 1:
            out.append(-1)
            j -= 1
        else:
            i -= 1
    return out[::-1]


def token_weights(prompt: str, words: dict[str, float], tokenize: Tokenize, decode: Decode,
                  length: int = MAX_TOKENS) -> torch.Tensor:
    """``[length]`` ones, with each listed word's token positions set to its weight (reweighting's equaliser).

    Raises ValueError naming a word that does not occur in ``prompt``."""
    weights = torch.ones(length)
    for word, value in words.items():
        positions = word_token_positions(prompt, word, tokenize, decode)
        if not positions:
            raise ValueError(f"reweight word {word!r} is not a word of the edited prompt {prompt!r} "
                             f"(words are matched exactly, split on spaces)")
        weights[positions] = float(value)
    return weights


def word_mask(prompt: str, word: str, tokenize: Tokenize, decode: Decode, length: int = MAX_TOKENS,
              role: str = "blend") -> torch.Tensor:
    """``[length]`` 0/1 mask of ``word``'s token positions in ``prompt``; ValueError naming the word if absent."""
    positions = word_token_positions(prompt, word, tokenize, decode)
    if not positions:
        raise ValueError(f"{role} word {word!r} is not a word of the prompt {prompt!r} "
                         f"(words are matched exactly, split on spaces)")
    mask = torch.zeros(length)
    mask[positions] = 1.0
    return mask
