"""trainer/prompts.py: each dataset's prompt as the reference's dataset class builds it, from one
row of the released-format fixtures (tests/released.py), composed exactly as `make train` does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import released
from core.datasets import load_dataset
from core.schema import QARecord
from presets import trainer_preset
from trainer.config import PromptConfig, TrainerConfig
from trainer.prompts import blip_question, prompt_text

CONF = Path(__file__).resolve().parents[1] / "conf"
CONSIDERING = " Considering the information presented in the frame, select the correct answer from the options."

# (dataset, split, qid) -> the reference's string for that row (written out by hand from its
# MCVideoQADataset / MusicAVQADataset / ThreeDVQADataset and LAVIS's blip_question processor).
EXPECTED = {
    ("nextqa", "train", "CH_4010069381_6"):
        "Question: what does the man do after sitting down? Option A: option 0 of CH_4010069381_6 Option B: option 1 "
        "of CH_4010069381_6 Option C: option 2 of CH_4010069381_6 Option D: option 3 of CH_4010069381_6 Option E: "
        "option 4 of CH_4010069381_6" + CONSIDERING,
    ("nextqa_csv", "val", "CW_2440175990_0"):
        "Question: why did the boy run (0) Option A: reason 0 Option B: reason 1 Option C: reason 2 Option D: "
        "reason 3 Option E: reason 4" + CONSIDERING,
    ("music_avqa", "train", "2"):
        "Question: is the cello in the video always playing? Based on the frames and audio information, answer "
        "the question using a single word or phase.",
    ("sqa3d", "test", "220602000005"):
        "i am sitting on the bed of scene0000_00 facing the window. Question: is the lamp on? Based on the frames "
        "and 3D Model information, answer the question using a single word or phase.",
    ("touchqa", "train", "12"):
        "Question: is the surface soft? Option A: option 0 of TP_20220516_190814_12 Option B: option 1 of "
        "TP_20220516_190814_12 Option C: option 2 of TP_20220516_190814_12 Option D: option 3 of "
        "TP_20220516_190814_12 Option E: option 4 of TP_20220516_190814_12" + CONSIDERING,
    ("thermalqa", "test", "4"):
        "Question: is the surface soft? Option A: option 0 of TP_20230303_121212_4 Option B: option 1 of "
        "TP_20230303_121212_4 Option C: option 2 of TP_20230303_121212_4 Option D: option 3 of "
        "TP_20230303_121212_4 Option E: option 4 of TP_20230303_121212_4" + CONSIDERING,
}


def composed(dataset: str, root: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"dataset={dataset}", "features=full", f"dataset.root={root}"])


@pytest.mark.parametrize("dataset, split, qid", list(EXPECTED))
def test_each_dataset_renders_the_references_prompt(tmp_path, dataset, split, qid):
    released.WRITERS[dataset](tmp_path)
    cfg = composed(dataset, tmp_path)
    records = {r.qid: r for r in load_dataset(cfg.dataset).qa[split]}
    assert qid in records, sorted(records)
    prompt = TrainerConfig.from_cfg(cfg.trainer).prompt
    assert prompt_text(records[qid], prompt) == EXPECTED[dataset, split, qid]


def test_blip_question_is_lavis_text_processing():
    assert blip_question('The "Cello" (left); is it #1: loud~ish! ok. ', 50) == "the cello left is it 1 loudish ok"
    assert blip_question("Where's the piano?", 50) == "where's the piano?"  # ' and ? are kept
    assert blip_question(" ".join(f"w{i}" for i in range(60)), 50) == " ".join(f"w{i}" for i in range(50))


def _open(question="What is on my left?", **extra) -> QARecord:
    return QARecord(qid="1", video_id="scene0000_00", split="val", question=question, answer="table", extra=extra)


def test_a_blank_situation_leaves_the_prompt_alone_and_the_template_is_configurable():
    prompt = trainer_preset("full", "dataset=sqa3d").prompt
    assert prompt_text(_open(situation="  "), prompt) == prompt_text(_open(), prompt)
    custom = trainer_preset("full", "dataset=sqa3d", "trainer.prompt.situation='{prompt} (context: {situation})'")
    assert prompt_text(_open(situation="In the kitchen."), custom.prompt).endswith("(context: in the kitchen)")


def test_the_situation_template_and_normalizer_are_checked():
    fields = dataclasses.asdict(trainer_preset("full").prompt)
    with pytest.raises(ValueError, match="lacks \\{prompt\\}"):
        PromptConfig(**{**fields, "situation": "Situation: {situation}"})
    with pytest.raises(ValueError, match="normalize='lower'"):
        PromptConfig(**{**fields, "normalize": "lower"})
    node = dataclasses.asdict(trainer_preset("full"))
    del node["prompt"]["situation"]
    with pytest.raises(ValueError, match="trainer.prompt: missing keys \\['situation'\\]"):
        TrainerConfig.from_cfg(node)
