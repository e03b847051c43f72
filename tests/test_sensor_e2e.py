"""A Touch-QA-shaped dataset end to end through the real CLIs and a real local Ray: several questions
per recording become one clip each, the tactile stream becomes modality `touch` (decoded in the same
pass as the RGB video), and the trainer trains an MMQA for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.store import FeatureStore
from media import write_video

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def row(recording: str, question_id: int, start: int, end: int, answer: int) -> dict:
    """A Touch-QA row as released: SeViLA fields plus the recording, question_id and window."""
    return {"video": f"{recording}/{question_id}", "qid": f"TP_{recording}_{question_id}", "num_option": 3,
            "a0": "soft", "a1": "hard", "a2": "smooth", "answer": answer, "question": "how does the surface feel?",
            "video_id": recording, "question_id": question_id, "start": start, "end": end}


@pytest.fixture(scope="module")
def touchqa(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("touchqa")
    for k, recording in enumerate(("20220516_190814", "20220517_101500", "20220518_090000")):
        (root / recording).mkdir()
        write_video(root / recording / "video.mp4", frames=40, fps=10, size=(64, 48), step=2 + k)
        write_video(root / recording / "gelsight.mp4", frames=40, fps=10, size=(40, 32), step=1 + k, audio=False)
    train = [row("20220516_190814", 1, 0, 20, 0), row("20220516_190814", 2, 20, 40, 1),
             row("20220517_101500", 3, 0, 20, 2), row("20220517_101500", 4, 10, 30, 0)]
    val = [row("20220518_090000", 5, 0, 20, 1), row("20220518_090000", 6, 20, 40, 2)]
    (root / "touch_train.json").write_text(json.dumps(train))
    (root / "touch_val.json").write_text(json.dumps(val))
    return root


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_touch_stream_is_extracted_and_trained(touchqa, tmp_path):
    common = ["dataset=touchqa", f"dataset.root={touchqa}", "dataset.modalities=[rgb,touch]", "features=tiny",
              f"out={tmp_path / 'features'}", "dataset.val_from_train=null",
              f"dataset.annotations.val={touchqa / 'touch_val.json'}", "features.decode.num_frames_stored=4"]
    run("extract.py", *common, "ray.num_cpus=2")
    report = json.loads((tmp_path / "features" / "touchqa" / "report.json").read_text())
    assert report["videos_total"] == report["videos_ok"] == 6  # one clip per question
    assert report["modalities"]["touch"]["videos"] == 6 and report["modalities"]["touch"]["shape"] == [4, 65, 64]
    assert report["run"]["videos_decoded"] == 6  # RGB and tactile in one decode pass per clip
    fs = FeatureStore(tmp_path / "features" / "touchqa")
    a, b = (fs.get(f"20220516_190814_q{q}", "touch") for q in (1, 2))
    assert not np.array_equal(a, b)  # two windows of one recording: two different clips
    assert fs.meta("20220516_190814_q2")["frame_indices"].min() >= 20

    run("train.py", *common, f"run_dir={tmp_path / 'run'}", "trainer.epochs=1", "trainer.max_steps=2",
        "trainer.batch_size=2", "trainer.data.num_workers=0")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    setup = next(r for r in rows if r["event"] == "setup")
    assert setup["modalities"] == ["rgb", "touch"] and setup["params"]["touch"] > 0
    steps = [r for r in rows if r["event"] == "step"]
    assert steps and all(set(r["loss"]) == {"rgb", "touch"} for r in steps)  # one pass (and MMQA) per modality


def test_thermal_stream_of_another_size_and_a_window_without_end(tmp_path):
    """Thermal-QA: the thermal camera has its own (smaller) frame size, and a row may omit `end`."""
    root = tmp_path / "thermalqa"
    for k, recording in enumerate(("20230301_101010", "20230302_111111")):
        (root / recording).mkdir(parents=True)
        write_video(root / recording / "RGBD_RGB.mp4", frames=30, fps=15, size=(64, 48), step=2 + k)
        write_video(root / recording / "RGBT_T.mp4", frames=30, fps=15, size=(48, 36), step=1 + k, audio=False)
    train = [row("20230301_101010", 1, 0, 15, 0), {**row("20230301_101010", 2, 15, 0, 1)}]
    del train[1]["end"]  # to the end of the recording
    val = [row("20230302_111111", 3, 0, 30, 2)]
    (root / "thermalqa_train.json").write_text(json.dumps(train))
    (root / "thermalqa_val.json").write_text(json.dumps(val))
    out = tmp_path / "features"
    run("extract.py", "dataset=thermalqa", f"dataset.root={root}", "dataset.modalities=[rgb,thermal]", "features=tiny",
        f"out={out}", "dataset.val_from_train=null", f"dataset.annotations.val={root / 'thermalqa_val.json'}",
        "features.decode.num_frames_stored=4", "ray.num_cpus=2")
    report = json.loads((out / "thermalqa" / "report.json").read_text())
    assert report["videos_ok"] == 3 and report["modalities"]["thermal"]["videos"] == 3
    assert report["modalities"]["thermal"]["shape"] == report["modalities"]["rgb"]["shape"]
    indices = FeatureStore(out / "thermalqa").meta("20230301_101010_q2")["frame_indices"]
    assert indices.min() >= 15 and indices.max() >= 25  # from start to the end of the recording
