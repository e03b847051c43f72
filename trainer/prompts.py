"""Question prompts and answer targets (text), shared by training and evaluation.

Multiple choice (NExT-QA style): the prompt lists "Option A: ..."; the target is "Option X" and
prediction reads the letter after "Option". Open-ended: the target is the answer text.
A record with a situation (SQA3D: `extra["situation"]`) has it before the question, as the
reference does ("Situation: ... Question: ..."; the template is `trainer.prompt.situation`).
"""

from __future__ import annotations

from core.schema import QARecord
from model.scoring import LETTERS, option_target
from trainer.config import PromptConfig


def prompt_text(record: QARecord, cfg: PromptConfig) -> str:
    """The LLM's text input for `record`, from the templates in `cfg`."""
    question = record.question.lower() if cfg.lowercase_question else record.question
    if record.options:
        if len(record.options) > len(LETTERS):
            raise ValueError(f"question {record.qid}: {len(record.options)} options, at most {len(LETTERS)}")
        options = " ".join(f"{option_target(i)}: {o}" for i, o in enumerate(record.options))
        prompt = cfg.multiple_choice.format(question=question, options=options)
    else:
        prompt = cfg.open_ended.format(question=question)
    situation = str(record.extra.get("situation") or "").strip()
    return cfg.situation.format(situation=situation, prompt=prompt) if situation else prompt


def target_text(record: QARecord) -> str:
    if record.options:
        if record.answer_idx is None or not 0 <= record.answer_idx < len(record.options):
            raise ValueError(f"question {record.qid}: answer_idx {record.answer_idx} is not one of its options")
        return option_target(record.answer_idx)
    return record.answer
