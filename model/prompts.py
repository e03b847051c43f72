"""Question prompts and answer targets (text), shared by training and evaluation.

Multiple choice (NExT-QA style): the prompt lists "Option A: ..."; the target is "Option X" and
prediction reads the letter after "Option". Open-ended: the target is the answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.schema import QARecord

LETTERS = "ABCDEFGHIJ"

MC_TEMPLATE = (
    "Question: {question} {options} Considering the information presented in the frame, "
    "select the correct answer from the options."
)
OPEN_TEMPLATE = "Question: {question} Short answer:"


@dataclass(frozen=True)
class PromptConfig:
    """`trainer.prompt` in conf/train.yaml; {question} and {options} are filled per record."""

    multiple_choice: str = MC_TEMPLATE
    open_ended: str = OPEN_TEMPLATE
    lowercase_question: bool = False   # MUSIC-AVQA lower-cases its questions


def option_target(index: int) -> str:
    return f"Option {LETTERS[index]}"


def prompt_text(record: QARecord, cfg: PromptConfig) -> str:
    question = record.question.lower() if cfg.lowercase_question else record.question
    if record.options:
        if len(record.options) > len(LETTERS):
            raise ValueError(f"question {record.qid}: {len(record.options)} options, at most {len(LETTERS)}")
        options = " ".join(f"{option_target(i)}: {o}" for i, o in enumerate(record.options))
        return cfg.multiple_choice.format(question=question, options=options)
    return cfg.open_ended.format(question=question)


def target_text(record: QARecord) -> str:
    if record.options:
        if record.answer_idx is None or not 0 <= record.answer_idx < len(record.options):
            raise ValueError(f"question {record.qid}: answer_idx {record.answer_idx} is not one of its options")
        return option_target(record.answer_idx)
    return record.answer


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
