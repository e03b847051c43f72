"""`scripts/predict.py` and app.predict on the session's demo store and checkpoint (slow).

The in-process extraction must be the pipeline's own: its features equal, bit for bit, what the
Ray extraction stored for the same video; the answer comes with option scores, each modality
alone and left out, and a JSON line last; another features config is one `error:` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.predict import Asker, PredictError
from conftest import DEMO_RUN_MODS
from core.store import FeatureStore
from core.util import to_plain
from presets import CONF

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
OPTIONS = ["left", "right", "up", "down", "it does not move"]


def features_cfg(*overrides: str) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=list(overrides))
    return to_plain(cfg.features)


def a_test_video(demo_run) -> tuple[str, Path]:
    tmp, _, _, broken = demo_run
    store = FeatureStore(tmp / "features" / "demo")
    vid = next(v for v in store.video_ids if v != broken and v in
               {q["video"] for q in json.loads((tmp / "data/demo/annotations/test.json").read_text())})
    return vid, tmp / "data" / "demo" / "videos" / f"{vid}.mp4"


def predict_cli(demo_run, *overrides: str) -> subprocess.CompletedProcess:
    tmp, _, env, _ = demo_run
    return subprocess.run([sys.executable, str(ROOT / "scripts/predict.py"), f"ckpt={tmp}/run/checkpoints", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_predict_cli_prints_answer_scores_compositions_and_json_last(demo_run):
    _, video = a_test_video(demo_run)
    options = "[" + ",".join(f'"{o}"' for o in OPTIONS) + "]"
    proc = predict_cli(demo_run, f"predict.video={video}", 'predict.question="Which direction does it move?"',
                       f"predict.options={options}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["options"] == OPTIONS and result["answer"] in OPTIONS
    assert result["answer"] == OPTIONS[result["choice"]] and f"answer: {result['answer']}" in proc.stdout
    assert len(result["scores"]) == 5 and sum(result["scores"]) == pytest.approx(1.0, abs=1e-3)
    assert result["choice"] == int(np.argmax(result["scores"]))  # the scores are the ones predict ranks
    assert set(result["alone"]) == set(result["without"]) == set(DEMO_RUN_MODS) == set(result["modalities"])
    assert all(r["answer"] in OPTIONS and len(r["scores"]) == 5 for r in [*result["alone"].values(),
                                                                        *result["without"].values()])
    # the compositions really change the model's input
    assert len({tuple(r["scores"]) for r in [result, *result["alone"].values(), *result["without"].values()]}) > 1


def test_in_process_extraction_is_the_pipelines(demo_run):
    """The features predict computes equal those the Ray pipeline stored for the same video, and
    an open-ended question gets generated text."""
    tmp, _, _, _ = demo_run
    vid, video = a_test_video(demo_run)
    asker = Asker.load(tmp / "run" / "checkpoints", features_cfg(), device="cpu")
    extracted = asker.extract(video)
    store = FeatureStore(tmp / "features" / "demo")
    for m in DEMO_RUN_MODS:
        assert np.array_equal(np.asarray(extracted["features"][m]), store.get(vid, m)), m
    result = asker.ask(extracted, "what sound does it make?")
    assert isinstance(result["answer"], str) and result["choice"] is None and "scores" not in result
    with pytest.raises(PredictError, match="at most 10"):
        asker.ask(extracted, "?", [str(i) for i in range(11)])


def test_predict_refuses_other_features_in_one_line(demo_run):
    _, video = a_test_video(demo_run)
    proc = predict_cli(demo_run, f"predict.video={video}", 'predict.question="what?"',
                       "features.decode.num_frames_stored=4")
    assert proc.returncode == 2, proc.stdout[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint ") and "rgb (trained" in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_other_features_of_one_modality_are_named(demo_run):
    tmp, _, _, _ = demo_run
    with pytest.raises(PredictError, match=r"trained on other features .*: flow \(trained") as err:
        Asker.load(tmp / "run" / "checkpoints", features_cfg("features.extractors.flow.farneback.pyr_scale=0.25"),
                   device="cpu")
    assert "rgb (" not in str(err.value) and "audio (" not in str(err.value)


def test_predict_user_errors_name_the_video(demo_run):
    tmp, _, _, broken = demo_run
    asker = Asker.load(tmp / "run" / "checkpoints", features_cfg(), device="cpu")
    with pytest.raises(PredictError, match="no such file"):
        asker.extract("/no/such.mp4")
    with pytest.raises(PredictError, match=f"{broken}.mp4: decode failed"):
        asker.ask(asker.extract(tmp / "data" / "demo" / "videos" / f"{broken}.mp4"), "what?")
