"""trainer/metrics.py and `make score`: strict EM and each dataset's reference scorer
(lavis/tasks/vqa.py of the reference), on a table of tricky cases worked out by hand from its code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.metrics import Scoring, gqa_match, qtype_table, score, sqa3d_match, summarize

ROOT = Path(__file__).resolve().parents[1]

# prediction, answer, strict, MUSIC-AVQA (GQA task), SQA3D task
CASES = [
    ("yes", "yes", 1, 1, 1),
    ("Yes, ", "yes", 0, 0, 1),            # SQA3D drops commas, strips, lower-cases; GQA compares as is
    ("Left", "left", 1, 0, 1),            # GQA is case-sensitive; strict EM lower-cases
    ("2", "two", 0, 1, 1),                # digit -> word in both
    ("10", "ten", 0, 1, 1),
    ("11", "eleven", 0, 0, 0),            # only 1-10 are mapped
    ("guitar", "acoustic guitar", 0, 1, 1),   # a substring of the answer counts
    ("in", "indoor", 0, 1, 1),
    ("e", "table", 0, 1, 1),              # ... even one letter (the reference's rule, kept)
    ("the left", "left", 0, 0, 1),        # SQA3D keeps the last word when the answer is one word
    ("two chairs", "two", 0, 0, 0),       # ... "chairs" is not in "two"
    ("left side", "left side", 1, 1, 1),
    ("Two.", "two", 0, 0, 0),             # the period is not removed by either scorer
    (" two", "two", 1, 0, 1),             # GQA does not strip
    ("Table</s><pad>", "table", 0, 0, 1),  # SQA3D removes the special tokens
    ("chair\nbed", "chair", 0, 0, 1),     # SQA3D keeps the first line
    ("", "yes", 0, 0, 0),                 # empty -> "unanswerable": never a substring by accident
]


@pytest.mark.parametrize("prediction, answer, strict, gqa, sqa3d", CASES)
def test_reference_scorers_case_by_case(prediction, answer, strict, gqa, sqa3d):
    assert gqa_match(prediction, answer) == bool(gqa)
    assert sqa3d_match(prediction, answer) == bool(sqa3d)
    for name, want in (("gqa", gqa), ("sqa3d", sqa3d)):
        got = score({"choice": None, "text": prediction}, answer, -1, Scoring(reference=name))
        assert got == {"strict": strict, "lenient": want}


def test_multiple_choice_scores_the_choice_and_nextqa_groups_causal_temporal_descriptive():
    scoring = Scoring(reference="choice", groups={"C": "Causal", "T": "Temporal", "D": "Descriptive"})
    rows = [{"qtype": t, **score({"choice": c, "text": ""}, "", 1, scoring)}
            for t, c in (("CW", 1), ("CH", 0), ("TN", 1), ("TC", 1), ("TP", 0), ("DC", 1), ("DL", 1), ("DO", 0))]
    summary = summarize(rows, scoring)
    assert list(summary["by_group"]) == ["Causal", "Temporal", "Descriptive"]
    assert [summary["by_group"][g]["strict"] for g in ("Causal", "Temporal", "Descriptive")] == \
        pytest.approx([50.0, 200 / 3, 200 / 3])
    table = qtype_table(summary, "val")
    assert "| *Temporal* | 3 | 66.7 | 66.7 |" in table and "reference (choice)" in table
    with pytest.raises(ValueError, match="dataset.scoring.reference='vqa'"):
        Scoring(reference="vqa")


def score_cli(tmp_path: Path, dataset: str, rows: list[dict]) -> subprocess.CompletedProcess:
    pred = tmp_path / f"{dataset}.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return subprocess.run([sys.executable, "scripts/score.py", f"dataset={dataset}", f"pred={pred}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_make_score_reproduces_the_sqa3d_and_music_avqa_scorers(tmp_path):
    """`make score` (scripts/score.py) on predictions files of the table: each dataset's reference
    column, by question type, from the prediction text alone (no model)."""
    for dataset, column in (("music_avqa", 3), ("sqa3d", 4)):
        rows = [{"qid": f"q{i}", "qtype": "What" if i % 2 else "Is", "prediction": c[0], "answer": c[1],
                 "modalities": "rgb+pointcloud"} for i, c in enumerate(CASES)]
        done = score_cli(tmp_path, dataset, rows)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])["results"]["rgb+pointcloud"]
        want = [c[column] for c in CASES]
        assert summary["lenient"] == pytest.approx(100 * sum(want) / len(want))
        assert summary["strict"] == pytest.approx(100 * sum(c[2] for c in CASES) / len(CASES))
        odd = [w for i, w in enumerate(want) if i % 2]
        assert summary["by_qtype"]["What"]["lenient"] == pytest.approx(100 * sum(odd) / len(odd))
        assert f"| **all** | {len(CASES)} |" in done.stdout


def test_make_score_names_the_bad_line(tmp_path):
    done = score_cli(tmp_path, "sqa3d", [{"qid": "q0", "qtype": "What", "prediction": "x", "answer": "x"},
                                         {"qid": "q1", "prediction": "x"}])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: {tmp_path / 'sqa3d.jsonl'}:2: lacks ['qtype', 'answer']" in done.stderr
