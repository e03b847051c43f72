"""How CREMA reads an answer off the frozen LLM: the letter of "Option X" (CREMA's multiple-choice
scoring) or the mean log-likelihood of an option's text (rank classification)."""

from __future__ import annotations

import torch

LETTERS = "ABCDEFGHIJ"


def option_target(index: int) -> str:
    """The target text of the `index`-th option with letter scoring: "Option A", "Option B", ..."""
    return f"Option {LETTERS[index]}"


def choice_token_ids(tokenizer, count: int = len(LETTERS)) -> tuple[list[int], list[int]]:
    """(token ids of the shared prefix of "Option A".."Option J", the one token of each letter).

    Works for any tokenizer that spells each letter as one token after a shared prefix
    (sentencepiece T5: ["▁Option"] + ["▁A"]; ByT5: the bytes of "Option " + [A]).
    """
    seqs = [tokenizer(option_target(i), add_special_tokens=False).input_ids for i in range(count)]
    k = 0
    while all(len(s) > k for s in seqs) and len({s[k] for s in seqs}) == 1:
        k += 1
    letters = []
    for i, s in enumerate(seqs):
        if len(s) != k + 1:
            raise ValueError(f"tokenizer spells {option_target(i)!r} as {s}: the letter is not one token "
                             f"after the shared prefix {seqs[0][:k]}, so options cannot be scored by letter")
        letters.append(s[k])
    return seqs[0][:k], letters


def mean_token_logprob(logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """[N]: the mean log-probability of each row's target tokens (padding excluded) under
    teacher-forced `logits` [N, T, V]. Multiple-choice options are ranked by it (option_text)."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target_ids[..., None])[..., 0]
    keep = target_mask.float()
    return (logp * keep).sum(-1) / keep.sum(-1)
