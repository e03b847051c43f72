"""The tiny preset's tokenizer: ByT5's bytes, plus whole-word phrase tokens."""

from __future__ import annotations

from typing import Sequence

from transformers import AddedToken, ByT5Tokenizer


def phrase_tokenizer(phrases: Sequence[str] = ()) -> ByT5Tokenizer:
    """ByT5's byte tokenizer, plus one token for each of `phrases` (whole words only): the tiny
    preset's stand-in for a subword vocabulary in which common answers are single tokens."""
    tok = ByT5Tokenizer()
    if phrases:
        tok.add_tokens([AddedToken(p, single_word=True, normalized=False) for p in phrases])
    return tok
