"""A pretrained stand-in for Flan-T5 on machines without the real weights (the tiny preset).

CREMA trains only small modules that turn video features into soft tokens for a FROZEN LLM; the
method relies on that LLM already knowing how to read a question and answer it from what it is
given. A random-init T5 knows nothing: it cannot spell an answer, nor tell which question is
asked, and the tiny demo then stays at chance (docs/training.md). This module gives the tiny T5
that reading skill, from text alone, in a few minutes on a CPU:

    input : "Frame 1: a low tone Frame 2: left Frame 3: the red square Question: What sound can be heard?"
    target: "a low tone"

Each example takes one TRAINING question of the dataset, its answer text and answers of other
training questions that are not among its options (distractors), in a random order behind the
same "Frame i: " prefixes the model puts before its visual tokens; sometimes the answer is left
out, so the LLM also learns to guess sensibly when the context does not say. The corpus never
contains a video, a feature or anything from the validation or test splits: which answer is
right for a clip is still for the MMQA modules to learn from the features. What the stand-in
learns is the language of the dataset (which phrases answer which question) and to copy a phrase
from its input, which is what Flan-T5 brings to CREMA.

The weights are cached by a hash of everything that determines them, so a run trains them once:

    path = standin_weights(t5_config, records, StandinConfig(...))   # a .safetensors file
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import AddedToken, ByT5Tokenizer, T5Config, T5ForConditionalGeneration

from model.metrics import mean_token_logprob
from model.optim import build_optimizer

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the corpus or the training changes: cached weights are then redone


@dataclass(frozen=True)
class StandinConfig:
    """`model.standin` in conf/model/crema_tiny.yaml."""

    enabled: bool = False
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    max_phrases: int = 3       # context phrases per example (1..max_phrases)
    p_no_answer: float = 0.2   # share of examples whose context leaves the answer out
    max_repeats: int = 2       # each phrase stands 1..max_repeats times (a frame has several soft tokens)
    embed_noise: float = 0.3   # Gaussian noise on phrase-token embeddings (x their std): soft tokens are never exact
    frame_prefix: str = "Frame {i}: "
    seed: int = 0
    cache_dir: str = "outputs/backbones"


def make_examples(records: Sequence[dict], cfg: StandinConfig, count: int,
                  rng: random.Random) -> list[tuple[str, str]]:
    """`count` (input text, target text) pairs from question records: {"prompt": the trainer's
    prompt for it, "options": [texts], "answer": text, "target": what the trainer's loss targets
    (the answer text, or "Option X" with letter scoring), "candidates": the target of each option,
    "answer_idx": the right option's index (-1: open-ended)}."""
    answers = sorted({r["answer"] for r in records})
    out = []
    for _ in range(count):
        r = records[rng.randrange(len(records))]
        own = set(r["options"]) | {r["answer"]}
        pool = [a for a in answers if a not in own]
        k = rng.randint(1, cfg.max_phrases)
        phrases = rng.sample(pool, min(k - 1, len(pool)))
        if rng.random() >= cfg.p_no_answer:
            phrases.append(r["answer"])
        elif pool:
            phrases.append(rng.choice(pool))
        rng.shuffle(phrases)
        context = " ".join(cfg.frame_prefix.format(i=i + 1) + " ".join([p] * rng.randint(1, cfg.max_repeats))
                           for i, p in enumerate(phrases))
        out.append((f"{context} {r['prompt']}", r["target"]))
    return out


def fingerprint(t5_config: dict, records: Sequence[dict], cfg: StandinConfig, tok: ByT5Tokenizer) -> str:
    """A hash of everything the weights depend on (architecture, corpus source, training)."""
    h = hashlib.sha256()
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("enabled", "cache_dir")}
    added = [str(t) for t in tok.added_tokens_decoder.values()]
    h.update(json.dumps({"format": FORMAT, "t5": t5_config, "cfg": keep, "tokens": added}, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps([r["prompt"], list(r["options"]), r["answer"], r["target"]]).encode())
    return h.hexdigest()[:16]


def phrase_tokenizer(phrases: Sequence[str] = ()) -> ByT5Tokenizer:
    """ByT5's byte tokenizer, plus one token for each of `phrases` (whole words only): the tiny
    preset's stand-in for a subword vocabulary in which common answers are single tokens."""
    tok = ByT5Tokenizer()
    if phrases:
        tok.add_tokens([AddedToken(p, single_word=True, normalized=False) for p in phrases])
    return tok


def train_standin(t5_config: dict, records: Sequence[dict], cfg: StandinConfig, tok: ByT5Tokenizer, *,
                  progress: bool = True) -> tuple[dict, dict]:
    """(state_dict, summary) of a T5 trained on the reading task. Deterministic for `cfg.seed` on one
    machine (CPU); the same seed draws the corpus and the initial weights."""
    if not records:
        raise ValueError("the stand-in LLM needs training questions; the train split has none")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    # Without this, denormal floats make CPU steps slower as training goes (measured 0.9 -> 2.3 s/step).
    torch.set_flush_denormal(True)
    model = T5ForConditionalGeneration(T5Config(**t5_config))
    model.train()
    opt, sched = build_optimizer(dict(model.named_parameters()), lr=cfg.lr, min_lr=0.05 * cfg.lr, weight_decay=0.0,
                                 betas=(0.9, 0.999), warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    base = len(ByT5Tokenizer())  # ids from here on are phrase tokens
    losses = []
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="stand-in LLM", unit="step", disable=not progress)
    for step in bar:
        batch = make_examples(records, cfg, cfg.batch_size, rng)
        enc = tok([b[0] for b in batch], padding="longest", return_tensors="pt")
        tgt = tok([b[1] for b in batch], padding="longest", return_tensors="pt")
        labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
        embeds = model.get_input_embeddings()(enc.input_ids)
        phrase = enc.input_ids >= base
        if cfg.embed_noise and phrase.any():
            scale = cfg.embed_noise * embeds[phrase].detach().std()
            embeds = embeds + torch.randn_like(embeds) * scale * phrase[..., None]
        loss = model(inputs_embeds=embeds, attention_mask=enc.attention_mask, labels=labels,
                     decoder_attention_mask=tgt.attention_mask).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    summary = {"steps": cfg.steps, "seconds": round(time.time() - start, 1),
               "loss_first": round(sum(losses[:20]) / len(losses[:20]), 4),
               "loss_last": round(sum(losses[-50:]) / len(losses[-50:]), 4),
               "heldout": reading_accuracy(model, tok, records, cfg)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, summary


@torch.no_grad()
def reading_accuracy(model, tok, records, cfg: StandinConfig, count: int = 200) -> dict:
    """How often the stand-in ranks the right option first on fresh examples, with the answer in
    the context (should be near 100%) and without it (near chance: it cannot know)."""
    out = {}
    mc = [r for r in records if r["candidates"]]
    if not mc:
        return out
    for name, p_no in (("with_answer", 0.0), ("without_answer", 1.0)):
        rng = random.Random(10_000 + cfg.seed)
        sub = StandinConfig(**{**asdict(cfg), "p_no_answer": p_no})
        rows = [mc[rng.randrange(len(mc))] for _ in range(count)]
        right = 0
        for r in rows:
            text, _ = make_examples([r], sub, 1, rng)[0]
            cands = list(r["candidates"])
            enc = tok([text] * len(cands), return_tensors="pt", padding="longest")
            tgt = tok(cands, padding="longest", return_tensors="pt")
            labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).logits
            score = mean_token_logprob(logits, tgt.input_ids, tgt.attention_mask)
            right += int(int(score.argmax()) == r["answer_idx"])
        out[name] = round(100.0 * right / count, 1)
    return out


def standin_weights(t5_config: dict, records: Sequence[dict], cfg: StandinConfig, tok: ByT5Tokenizer) -> Path:
    """The cached stand-in weights (a safetensors file), trained first if not cached yet."""
    key = fingerprint(t5_config, records, cfg, tok)
    root = Path(cfg.cache_dir)
    path = root / f"standin-t5-{key}.safetensors"
    if path.exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    log.info("training the stand-in LLM (%d steps; cached as %s)", cfg.steps, path)
    state, summary = train_standin(t5_config, records, cfg, tok)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"summary": json.dumps(summary)})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"key": key, **summary}, indent=2) + "\n")
    log.info("stand-in LLM: %s", summary)
    return path


def load_standin(model: T5ForConditionalGeneration, path: Path) -> None:
    """Load T5 weights saved by `standin_weights` (strict: the architecture must match)."""
    if not path.is_file():
        raise ValueError(
            f"model.t5_weights={path}: no such file. It is the stand-in LLM that `make train` trains and "
            f"caches (model/standin.py, model.standin.cache_dir); run the same `make train` again to "
            f"re-create it (same settings give the same file), or point model.t5_weights at a copy")
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit model.t5 (another architecture?): {err}") from None
