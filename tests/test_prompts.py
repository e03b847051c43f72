"""trainer/prompts.py: the templates of conf/trainer/*.yaml filled per record, SQA3D's situation first."""

from __future__ import annotations

import dataclasses

import pytest

import released
from core.datasets import load_dataset
from core.schema import QARecord
from presets import trainer_preset
from trainer.config import PromptConfig, TrainerConfig
from trainer.prompts import prompt_text


def _open(question="What is on my left?", **extra) -> QARecord:
    return QARecord(qid="1", video_id="scene0000_00", split="val", question=question, answer="table", extra=extra)


def test_the_situation_comes_before_the_question():
    prompt = trainer_preset("full").prompt
    record = _open(situation="I am facing the window.")
    assert prompt_text(record, prompt) == "Situation: I am facing the window. Question: What is on my left? Short answer:"
    assert prompt_text(_open(), prompt) == "Question: What is on my left? Short answer:"
    assert prompt_text(_open(situation="  "), prompt) == "Question: What is on my left? Short answer:"


def test_the_situation_template_comes_from_the_config():
    prompt = trainer_preset("full", "trainer.prompt.situation='{prompt} (context: {situation})'").prompt
    assert prompt_text(_open(situation="in the kitchen"), prompt) == \
        "Question: What is on my left? Short answer: (context: in the kitchen)"
    assert trainer_preset("tiny").prompt.situation == trainer_preset("full").prompt.situation  # inherited


def test_the_situation_template_is_required_and_checked():
    fields = dataclasses.asdict(trainer_preset("full").prompt)
    with pytest.raises(ValueError, match="lacks \\{prompt\\}"):
        PromptConfig(**{**fields, "situation": "Situation: {situation}"})
    node = dataclasses.asdict(trainer_preset("full"))
    del node["prompt"]["situation"]
    with pytest.raises(ValueError, match="trainer.prompt: missing keys \\['situation'\\]"):
        TrainerConfig.from_cfg(node)


def test_sqa3d_records_reach_the_prompt_with_their_situation(tmp_path):
    released.sqa3d(tmp_path)
    cfg = {"name": "sqa3d", "root": str(tmp_path), "video_dir": str(tmp_path / "Video"),
           "annotations": {"test": str(tmp_path / "ScanQA_format" / "SQA_test.json")}}
    [record] = load_dataset(cfg).qa["test"]
    assert prompt_text(record, trainer_preset("full").prompt) == (
        "Situation: I am sitting on the bed of scene0000_00 facing the window. Question: Is the lamp on? Short answer:")
