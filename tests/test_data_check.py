"""`make data` / scripts/data.py on dataset folders in their released layouts (tests/released.py):
the per-split counts, the JSON last line, exit 2 with one line for a malformed row, no Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import released
from core.data_check import SHOW_MISSING, check_index, describe
from core.schema import DatasetIndex, QARecord, VideoEntry

ROOT = Path(__file__).resolve().parents[1]


def data(*overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "data.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(released.EXPECTED))
def test_counts_per_split_and_the_json_last_line(tmp_path, name):
    released.WRITERS[name](tmp_path / "data")
    (tmp_path / "cwd").mkdir()
    proc = data(f"dataset={name}", f"dataset.root={tmp_path / 'data'}", cwd=tmp_path / "cwd")
    assert proc.returncode == 0, proc.stderr
    assert not list((tmp_path / "cwd").iterdir()), "a check writes nothing (no Hydra log folder)"
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"dataset": name, "splits": released.EXPECTED[name]}
    missing = [line.split("missing: ", 1)[1] for line in lines if line.startswith("  missing: ")]
    assert missing and all(str(tmp_path) in p and not Path(p).exists() for p in missing)
    assert any(line.startswith("  question types: ") for line in lines)


@pytest.mark.parametrize("name", sorted(released.CARVED))
def test_carved_validation_keeps_the_test_split_and_the_train_questions(tmp_path, name):
    root = released.WRITERS[name](tmp_path)
    proc = data(f"dataset={name}", f"dataset.root={root}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])["splits"]
    test, train_total = released.CARVED[name]
    assert summary["test"] == test
    assert summary["train"]["questions"] + summary["val"]["questions"] == train_total


def test_nextqa_lists_its_question_types(tmp_path):
    released.nextqa(tmp_path)
    proc = data("dataset=nextqa", f"dataset.root={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "  question types: TC 1, DO 1" in proc.stdout.splitlines()


def test_a_malformed_row_exits_2_with_one_line_naming_file_row_and_key(tmp_path):
    released.touchqa(tmp_path)
    path = tmp_path / "touch_train.json"
    rows = json.loads(path.read_text())
    rows[2]["answer"] = "B"
    path.write_text(json.dumps(rows))
    proc = data("dataset=touchqa", f"dataset.root={tmp_path}")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: row 2 (question_id=13, qid='TP_20220516_190814_13'): "
                           "key 'answer' must be an integer")


def test_a_wrong_root_names_the_annotation_file_it_expected(tmp_path):
    proc = data("dataset=sqa3d", f"dataset.root={tmp_path}")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert f"{tmp_path}/ScanQA_format/SQA_train.json does not exist" in line


def test_the_demo_says_how_to_generate_it(tmp_path):
    proc = data("dataset=demo", f"dataset.root={tmp_path}/demo")
    assert proc.returncode == 2 and "make extract DATASET=demo" in proc.stderr


def test_plain_videos_are_one_split(tmp_path):
    released.touch(tmp_path, "a.mp4", "sub/b.webm")
    proc = data("dataset=videos", f"dataset.path={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["splits"] == {"all": released.counts(0, 2, 2)}


def test_the_check_starts_no_ray_and_imports_no_decoder():
    code = "import sys, scripts.data; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert "core.datasets" in loaded and "core.data_check" in loaded
    for forbidden in ("ray", "av", "decord", "cv2", "torch", "pipeline", "pipeline.demo", "extractors"):
        assert forbidden not in loaded, forbidden


def test_only_the_first_missing_paths_are_listed(tmp_path):
    videos = [VideoEntry(f"v{i}", str(tmp_path / f"v{i}.mp4"), "train") for i in range(SHOW_MISSING + 3)]
    qa = [QARecord(qid=str(i), video_id=v.video_id, split="train", question="q", answer="a") for i, v in enumerate(videos)]
    (tmp_path / "v0.mp4").write_bytes(b"")
    report = check_index(DatasetIndex(name="x", videos=videos, qa={"train": qa + qa[:1]}))
    assert report["train"]["questions"] == len(videos) + 1 and report["train"]["media_missing"] == SHOW_MISSING + 2
    assert report["train"]["missing"] == [v.path for v in videos[1:SHOW_MISSING + 1]]
    assert "  ... and 2 more missing" in describe("x", report)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("dataset, override", [("touchqa", "dataset.root=/d/x"), ("videos", "dataset.path=/d/x")])
def test_make_data_maps_data_like_the_other_targets(dataset, override):
    out = subprocess.run(["make", "-n", "data", f"DATASET={dataset}", "DATA=/d/x"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert f"scripts/data.py dataset={dataset} {override}" in out
