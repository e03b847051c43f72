"""`make plan` through its real CLI on the session's Ray (tests/conftest.py): a sample of the demo
extracted by the real graph into a scratch store, the prediction for this cluster and another
one, plan.json beside the store and one JSON line last (slow)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_cli
from pipeline.demo import generate_demo

pytestmark = pytest.mark.slow


def test_make_plan_predicts_from_a_sample_and_writes_plan_json(tmp_path):
    generate_demo(tmp_path / "data" / "demo", num_videos=4)
    env = {**os.environ, "CREMA_DATA": str(tmp_path / "data")}
    out = tmp_path / "out"
    # store.shard_size=1 gives the dataset the sample's shards (two per fused actor, of one video): the
    # store-bytes prediction must then come back to the sample's own bytes
    proc = run_cli(env, "scripts/plan.py", "dataset=demo", "dataset.num_videos=4", "dataset.modalities=[rgb,depth]",
                   "features.decode.num_frames_stored=4", f"out={out}", "store.shard_size=1", "plan.sample=4",
                   "plan.gpus=8", "plan.cpus=96")
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"predicted_wall_s", "predicted_store_bytes", "bottleneck"} <= set(last)
    plan = json.loads((out / "demo" / "plan.json").read_text())
    assert plan["predicted_wall_s"] == last["predicted_wall_s"] > 0
    assert last["bottleneck"] in plan["stage_seconds_per_video"]
    assert set(plan["stage_seconds_per_video"]) == {"decode", "depth", "encoder", "writer"}
    assert sorted(plan["sample"]["videos"]) == sorted(f"demo_{i:04d}" for i in range(4))
    assert plan["probes"]["videos"] == 4 and not plan["probes"]["unreadable"]
    assert abs(plan["predicted_store_bytes"] / plan["bytes"]["sample_total"] - 1) < 0.05
    assert [c["cluster"] for c in plan["clusters"]] == [plan["measured_on"], {"CPU": 96, "GPU": 8}]
    assert plan["clusters"][1]["plan"] == "stages" and plan["clusters"][1]["gpu_hours"] > 0
    assert "== plan demo" in proc.stdout and "bottleneck" in proc.stdout
    assert not (out / ".plan-demo").exists()  # the scratch store is gone
    assert not (out / "demo" / "shards.jsonl").exists()  # and the real store untouched
