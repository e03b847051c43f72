"""End to end on a real demo store: the extraction CLI -> scripts/train.py -> scripts/eval.py (slow).

The store is made by the real pipeline (Ray, decoders, tiny extractors) from a small demo
generated into a temporary CREMA_DATA, so the shared data/demo is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import DEMO_RUN_MODS as MODS, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer import checkpoint
from trainer.inspection import find, holdings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(tmp: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli({**os.environ, "CREMA_DATA": str(tmp / "data")}, script, *overrides)


@pytest.fixture(scope="module")
def trained(demo_run):
    """The session's demo store + checkpoint (tests/conftest.py: demo_run)."""
    tmp, common, _, _ = demo_run
    return tmp, common


def test_training_writes_checkpoints_metrics_curves_and_report(trained):
    tmp, _ = trained
    run_dir = tmp / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["event"] == "epoch"]
    evals = [r for r in rows if r["event"] == "eval"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2] and len(evals) == 3
    assert all(r["chance"] == pytest.approx(20.0) and 0 <= r["strict"] <= 100 for r in evals)
    assert {r["split"] for r in rows if r["event"] == "data"} == {"train", "val", "test"}
    steps = [r for r in rows if r["event"] == "step"]
    assert all(set(r["loss"]) == set(MODS) for r in steps)  # one pass per modality per step
    first = [sum(r["loss"].values()) for r in steps if r["epoch"] == 0]
    last = [sum(r["loss"].values()) for r in steps if r["epoch"] == 2]
    assert sum(last) / len(last) < sum(first) / len(first)  # it learns something
    for kind in ("best", "last"):
        ckpt = checkpoint.resolve(run_dir / "checkpoints", kind)
        keys = load_file(str(ckpt / "model.safetensors")).keys()
        for m in MODS:
            assert any(f"lora_B.{m}." in k for k in keys) and any(f"heads.{m}.proj" in k for k in keys), (kind, m)
        assert any(k.startswith("fusion.") for k in keys)
    report = (run_dir / "report.md").read_text()
    for qtype in ("motion", "sound", "depth"):
        assert f"| {qtype} |" in report
    assert "### val" in report and "### test" in report
    assert (run_dir / "curves.png").stat().st_size > 10_000
    # the CLI's run also logged TensorBoard events (trainer.logger=tensorboard by default), closed and readable
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for m in MODS:
        assert [e.step for e in events.Scalars(f"loss/{m}")] == [r["step"] for r in steps]
    assert [e.value for e in events.Scalars("val/strict")] == pytest.approx([r["strict"] for r in evals])
    assert "config/text_summary" in events.Tags()["tensors"]
    # and `make inspect`'s holdings of the demo checkpoint: the run's modalities, steps and hashes
    view = holdings(find(run_dir))
    assert view["modalities"] == MODS and view["trained"]["steps"] == steps[-1]["step"]
    assert view["trained"]["epochs_done"] == 3 and view["kind"] == "last" and view["resumable"]
    assert set(view["feature_hashes"]) == set(MODS) and view["origin"]["how"] == "trained here (make train)"


def test_eval_composes_subsets_and_matches_training(trained):
    tmp, common = trained
    run(tmp, "scripts/eval.py", *common, f"run_dir={tmp}/run", "eval.split=val",
        "eval.combinations=[[rgb],[rgb,flow],[rgb,audio],all]", "eval.lora_off=[flow]")
    out = json.loads((tmp / "run/eval/val.json").read_text())
    labels = [r["label"] for r in out["results"]]
    assert labels == ["rgb", "rgb+flow (LoRA off: flow)", "rgb+audio", "rgb+flow+audio (LoRA off: flow)"]
    run(tmp, "scripts/eval.py", *common, f"run_dir={tmp}/run", "eval.split=val")
    plain = json.loads((tmp / "run/eval/val.json").read_text())["results"][0]
    rows = [json.loads(line) for line in (tmp / "run/metrics.jsonl").read_text().splitlines()]
    final_val = next(r for r in rows if r["event"] == "final_val")
    # the same best-on-validation weights, rebuilt from the checkpoint's config: same numbers
    assert plain["summary"]["strict"] == pytest.approx(final_val["strict"])
    assert plain["summary"]["n"] == final_val["n"] > 0
    predictions = {r["label"]: [q["choice"] for q in r["rows"]] for r in out["results"]}
    assert len({tuple(v) for v in predictions.values()}) > 1  # the subsets really change the inputs
    # it learns the task, not just a lower loss: the sound questions are answered from the audio
    # above chance and better than without audio (3 epochs on 36 videos; measured 3/5 vs 1/5)
    sound = {r["label"]: [q["strict"] for q in r["rows"] if q["qtype"] == "sound"] for r in out["results"]}
    with_audio, without = sound["rgb+audio"], sound["rgb"]
    print("val sound accuracy, rgb+audio vs rgb:", with_audio, without)
    assert len(with_audio) >= 3 and sum(with_audio) / len(with_audio) > max(0.2, sum(without) / len(without))
