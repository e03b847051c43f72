"""Question prompts and answer targets (text), shared by training and evaluation.

The templates are the reference's, per dataset (conf/trainer/dataset/<name>.yaml):
- multiple choice (NExT-QA, Touch-QA, Thermal-QA): "Question: q Option A: ... Option E: ...
  Considering ..."; the target is "Option X" and prediction reads the letter after "Option";
- open-ended (MUSIC-AVQA, SQA3D): the question inside the dataset's instruction; the target is
  the answer text. A record with a situation (SQA3D: `extra["situation"]`) has it first.
`normalize: blip_question` runs the question and the situation through LAVIS's question
processor as the reference's dataset classes do (lower-case, delete . ! " ( ) * # : ; ~, strip
trailing spaces, keep the first `max_words` words).
"""

from __future__ import annotations

import re

from core.schema import QARecord
from model.scoring import LETTERS, option_target
from trainer.config import PromptConfig

_BLIP_DROPPED = re.compile(r'[.!"()*#:;~]')


def blip_question(text: str, max_words: int) -> str:
    """LAVIS's `blip_question` text processor (the reference's question normalisation)."""
    text = _BLIP_DROPPED.sub("", text.lower()).rstrip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def _normalized(text: str, cfg: PromptConfig) -> str:
    return blip_question(text, cfg.max_words) if cfg.normalize == "blip_question" else text


def prompt_text(record: QARecord, cfg: PromptConfig) -> str:
    """The LLM's text input for `record`, from the templates in `cfg`."""
    question = _normalized(record.question, cfg)
    if record.options:
        if len(record.options) > len(LETTERS):
            raise ValueError(f"question {record.qid}: {len(record.options)} options, at most {len(LETTERS)}")
        options = " ".join(f"{option_target(i)}: {o}" for i, o in enumerate(record.options))
        prompt = cfg.multiple_choice.format(question=question, options=options)
    else:
        prompt = cfg.open_ended.format(question=question)
    situation = str(record.extra.get("situation") or "")
    if not situation.strip():
        return prompt
    return cfg.situation.format(situation=_normalized(situation, cfg), prompt=prompt)


def target_text(record: QARecord) -> str:
    """The text the LLM learns to write: "Option X" (multiple choice) or the answer."""
    if record.options:
        if record.answer_idx is None or not 0 <= record.answer_idx < len(record.options):
            raise ValueError(f"question {record.qid}: answer_idx {record.answer_idx} is not one of its options")
        return option_target(record.answer_idx)
    return record.answer
