"""The stand-in LLM of the tiny preset (model/standin.py): its corpus, tokenizer, cache and loading."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from model.standin import (StandinConfig, fingerprint, load_standin, make_examples, phrase_tokenizer,
                           standin_weights)

T5 = dict(vocab_size=400, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
          feed_forward_proj="gated-gelu", tie_word_embeddings=True, dropout_rate=0.0,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def records():
    out = []
    for colour in ("red", "green", "blue"):
        out.append({"prompt": "Question: What colour?", "options": ["red", "green", "blue"], "answer": colour,
                    "target": colour, "candidates": ["red", "green", "blue"], "answer_idx": ["red", "green", "blue"].index(colour)})
    for shape in ("a square", "a circle"):
        out.append({"prompt": "Question: What shape?", "options": ["a square", "a circle"], "answer": shape,
                    "target": shape, "candidates": ["a square", "a circle"], "answer_idx": ["a square", "a circle"].index(shape)})
    return out


def test_examples_hold_the_answer_and_only_distractors_from_other_questions():
    cfg = StandinConfig(max_phrases=3, p_no_answer=0.0, max_repeats=1)
    rows = records()
    for text, target in make_examples(rows, cfg, 200, random.Random(0)):
        context, prompt = text.split(" Question: ")
        phrases = [p.split(": ", 1)[1].strip() for p in context.split("Frame ")[1:]]
        assert 1 <= len(phrases) <= 3 and target in phrases
        own = ["red", "green", "blue"] if prompt == "What colour?" else ["a square", "a circle"]
        assert [p for p in phrases if p in own] == [target]  # no other option of the question
    cfg = StandinConfig(max_phrases=3, p_no_answer=1.0)
    for text, target in make_examples(rows, cfg, 100, random.Random(1)):
        assert target not in text.split(" Question: ")[0]


def test_phrase_tokens_are_single_tokens_of_whole_words_only():
    tok = phrase_tokenizer(["up", "a low tone"])
    up, tone = tok.convert_tokens_to_ids("up"), tok.convert_tokens_to_ids("a low tone")
    assert up >= 384 and tone >= 384
    assert tok("a low tone", add_special_tokens=False).input_ids == [tone]
    assert up in tok("it goes up now", add_special_tokens=False).input_ids
    assert up not in tok("a cup", add_special_tokens=False).input_ids  # not inside a word
    assert tok.batch_decode(tok(["up", "a low tone"]).input_ids, skip_special_tokens=True) == ["up", "a low tone"]


def test_weights_are_cached_by_fingerprint_and_loaded_strictly(tmp_path, monkeypatch):
    rows = records()
    tok = phrase_tokenizer(sorted({r["answer"] for r in rows}))
    cfg = StandinConfig(enabled=True, steps=3, batch_size=4, warmup_steps=1, cache_dir=str(tmp_path))
    path = standin_weights(T5, rows, cfg, tok)
    assert path.is_file() and path.with_suffix(".json").is_file()
    import model.standin as standin
    monkeypatch.setattr(standin, "train_standin", lambda *a, **k: pytest.fail("trained twice"))
    assert standin_weights(T5, rows, cfg, tok) == path
    # anything the weights depend on changes the key
    assert fingerprint(T5, rows[:-1], cfg, tok) != fingerprint(T5, rows, cfg, tok)
    assert fingerprint(T5, rows, StandinConfig(steps=4), tok) != fingerprint(T5, rows, StandinConfig(steps=3), tok)
    assert fingerprint(T5, rows, cfg, phrase_tokenizer()) != fingerprint(T5, rows, cfg, tok)
    model = T5ForConditionalGeneration(T5Config(**T5))
    load_standin(model, path)
    assert torch.equal(model.shared.weight, standin.load_file(str(path))["shared.weight"])
    other = T5ForConditionalGeneration(T5Config(**{**T5, "d_ff": 32}))
    with pytest.raises(ValueError, match="does not fit model.t5"):
        load_standin(other, path)
    with pytest.raises(ValueError, match="no such file"):
        load_standin(model, tmp_path / "gone.safetensors")


@pytest.mark.slow
def test_standin_learns_to_read_the_answer_from_its_context():
    """A small T5 trained on the corpus ranks the right option first when the context holds it,
    and is near chance when it does not (it cannot know)."""
    from model.standin import train_standin

    rows = records() * 4
    tok = phrase_tokenizer(sorted({r["answer"] for r in rows}))
    cfg = StandinConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, max_phrases=3)
    _, summary = train_standin({**T5, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2},
                               rows, cfg, tok, progress=False)
    assert summary["loss_last"] < summary["loss_first"] / 2
    assert summary["heldout"]["with_answer"] >= 90.0
    assert summary["heldout"]["without_answer"] <= 70.0
