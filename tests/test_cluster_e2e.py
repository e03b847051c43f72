"""`make submit` against a real two-node Ray cluster on this machine (tests/cluster.py): the job
runs on both nodes and writes the same bytes as a local run; losing the worker node mid-run
costs nothing; `make submit-train` trains on the local run's store with Ray Train (slow).

Both runs share one config, so their stores must be byte-identical: the demo at 8 videos, one
video per shard, and a decoder that sleeps before decoding (tests/faults.py:slow_decode) so that
the node can be killed while shards are still in flight. The output does not depend on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import LocalCluster
from faults import SLOW_DECODE_ENV
from core.store import MARKER, collect_markers, read_store_meta, registry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
N_VIDEOS = 8
CONFIG = [f"dataset.num_videos={N_VIDEOS}", "store.shard_size=1", "features.decode.num_frames_stored=4",
          "dataset.modalities=[rgb,depth,flow]", "+features.decode.decoder=faults:slow_decode"]
# Logical CPUs per node (the machine has 2 cores): the tiny preset's eight pools need 2 in all, so
# the head alone can hold every pool (the job survives losing the worker) and SPREAD has room to
# put some on each node.
NUM_CPUS = {"head": 4, "w1": 4}
# The GCS declares a silent node dead after ~1 s x 4 missed health checks (Ray's defaults: 3 s x 5
# plus a 10 s timeout), so the lost node's work moves to the head sooner; the retry budget
# (pipeline/graph.py) is sized for the defaults.
# make submit-train: Ray Train workers (ranks), a rank per node (placement SPREAD).
TRAIN_WORKERS = 2
# A few steps on the local run's store: its extraction overrides (the same features hash), rgb only.
TRAIN_ARGS = [c for c in CONFIG if not c.startswith("store.")] + [
    "model.modalities=[rgb]", "trainer.epochs=1", "trainer.data.num_workers=0",
    f"trainer.batch_size={8 // TRAIN_WORKERS}", "trainer.global_batch=8"]  # the tiny recipe's global batch of 8 over the ranks
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                   "RAY_health_check_failure_threshold": "4"}


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(num_cpus=NUM_CPUS, extra_env=FAST_NODE_DEATH).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster") / "demo"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The same config extracted by a local Ray (scripts/extract.py): what the cluster must match."""
    out = tmp_path_factory.mktemp("local")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env[SLOW_DECODE_ENV] = "0"  # the same config (slow_decode), without its wait: nothing is killed here
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/extract.py"), "dataset=demo", f"dataset.root={data}",
                           f"out={out}", "ray.num_cpus=2", *CONFIG],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "demo"


def submit_cmd(cluster: LocalCluster, out: Path, data: Path, submission_id: str) -> list[str]:
    """`make submit` as a user types it (relative paths become absolute in the Makefile). The
    per-stage pools, so that stages spread over both nodes (the local reference run, on 2 CPUs,
    takes the fused plan: the bytes must match across plans too)."""
    return ["make", "--no-print-directory", "-C", str(ROOT), "submit", "DATASET=demo",
            f"RAY_ADDRESS={cluster.dashboard_url}", f"OUT={out}", f"DATA={data}", f"ARGS={' '.join(CONFIG)} plan.mode=stages",
            f"SUBMIT_FLAGS=--submission-id={submission_id}"]


def measured_plan(root: Path, reference: Path) -> None:
    """A plan.json beside the job's store, as `make plan` writes it, for these features and this
    cluster's shape (8 CPUs): depth measured at 4x the seconds per video of every other stage."""
    config_hash = json.loads((reference / "report.json").read_text())["config_hash"]
    costs = {"decode": 0.5, "depth": 2.0, "flow": 0.5, "encoder": 0.5, "writer": 0.5}
    root.mkdir(parents=True)
    (root / "plan.json").write_text(json.dumps({"config_hash": config_hash, "stage_seconds_per_video": costs,
                                                "clusters": [{"cluster": {"CPU": sum(NUM_CPUS.values()), "GPU": 0}}]}))


def store_files(root: Path) -> dict[str, str]:
    """sha256 of every file of every shard (array chunks, array and group zarr.json), markers aside:
    'the same store'. A marker differs by its timings and nodes only."""
    out = {}
    for path in sorted(root.glob("*/*.zarr/**/*")):
        if path.is_file() and path.name != MARKER:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    return cluster.api(f"/api/jobs/{submission_id}")["status"]


def nodes_used(markers: dict) -> dict[str, set[str]]:
    """node id -> the stages that ran there, over every shard's marker."""
    used: dict[str, set[str]] = {}
    for marker in markers.values():
        for stage, node in marker["nodes"].items():
            used.setdefault(node["node_id"], set()).add(stage)
    return used


def check_store(root: Path, reference: Path) -> dict:
    """Every expected shard present and valid, each video in exactly one shard, and the bytes of
    the local run; returns the markers."""
    hashes = registry(read_store_meta(reference))
    assert registry(read_store_meta(root)) == hashes
    markers = collect_markers(root, hashes=hashes)
    assert sorted(markers) == sorted(collect_markers(reference, hashes=hashes))
    videos = [v for m in markers.values() for v in m["video_ids"]]
    assert sorted(videos) == sorted(set(videos)) and len(videos) == N_VIDEOS
    assert all(m["ok"] == m["video_ids"] for m in markers.values())
    assert store_files(root) == store_files(reference)
    return markers


def submit_train(cluster: LocalCluster, out: Path, data: Path, run_dir: Path, sid: str) -> subprocess.CompletedProcess:
    """`make submit-train` as a user types it."""
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "submit-train", "DATASET=demo",
           f"RAY_ADDRESS={cluster.dashboard_url}", f"OUT={out}", f"DATA={data}", f"RUN_DIR={run_dir}",
           f"WORKERS={TRAIN_WORKERS}", f"ARGS={' '.join(TRAIN_ARGS)}", f"SUBMIT_FLAGS=--submission-id={sid}"]
    return subprocess.run(cmd, env=cluster.env(), capture_output=True, text=True, timeout=900)


def test_make_submit_train_trains_on_the_cluster_and_its_checkpoint_loads(cluster, reference, data, tmp_path):
    """Runs before the node-loss test, with both nodes up: every node is checked for the shared
    store and run folder, the job SUCCEEDS, and the run folder holds a checkpoint that loads and
    the metrics of its steps. A store that is not there fails the job with an `error:` line."""
    import torch

    from trainer import checkpoint
    from trainer.evaluate import load_for_eval

    assert set(cluster.node_ids()) == {"head", "w1"}
    run_dir = tmp_path / "run"
    proc = submit_train(cluster, reference.parent, data, run_dir, "crema-e2e-train")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert job_status(cluster, "crema-e2e-train") == "SUCCEEDED"
    assert "shared storage: 2 node(s) see the store and the run folder" in out, out[-6000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows if r["event"] in ("step", "epoch")][-1] == "epoch"
    assert all(set(r["loss"]) == {"rgb"} for r in rows if r["event"] == "step")
    model, _, state = load_for_eval(checkpoint.resolve(run_dir / "checkpoints", "last"), torch.device("cpu"))
    assert state["step"] >= 1 and "rgb" in model.modalities
    assert (run_dir / "report.md").is_file() and not list(run_dir.glob(".crema-shared-*"))

    missing = submit_train(cluster, tmp_path / "no_features", data, tmp_path / "run2", "crema-e2e-train-nostore")
    assert missing.returncode != 0 and job_status(cluster, "crema-e2e-train-nostore") == "FAILED"
    assert f"error: no feature store at {tmp_path / 'no_features' / 'demo'}" in missing.stdout + missing.stderr
    assert "Traceback" not in missing.stdout + missing.stderr


def test_make_submit_uses_both_nodes_loses_one_mid_run_and_matches_a_local_run(cluster, reference, data, tmp_path):
    """One `make submit`: its stage pools follow the measured plan.json beside the store (the stage
    at 4x the cost gets 4x the actors), its stages spread over both nodes, the worker node is
    killed (kill -9 of its raylet) after the first shard, the job still SUCCEEDS, every shard is
    written once, and the store's bytes are those of a local run."""
    ids = cluster.node_ids()
    assert set(ids) == {"head", "w1"}, f"both nodes must be up: {ids}"
    root = tmp_path / "out" / "demo"
    measured_plan(root, reference)
    sid = "crema-e2e-node-loss"
    log = tmp_path / "submit.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(submit_cmd(cluster, tmp_path / "out", data, sid), env=cluster.env(),
                                stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and proc.poll() is None and not list(root.glob(f"*/*.zarr/{MARKER}")):
                time.sleep(0.2)
            done = len(list(root.glob(f"*/*.zarr/{MARKER}")))
            assert proc.poll() is None and job_status(cluster, sid) == "RUNNING", log.read_text()[-4000:]
            assert 1 <= done < N_VIDEOS, f"{done} shards written when the node was to be lost"
            raylet = cluster.raylet("w1")
            raylet.kill()  # kill -9: the node is gone (its `ray start --block` stops the rest of it)
            killed_at = time.time()
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 0, text[-6000:]
    # 8 CPUs, decode and writer fixed at one actor by the tiny preset: 6 actors for depth, flow,
    # encoder at 2.0 : 0.5 : 0.5 s per video -> 4 : 1 : 1 (equal shares would be 1 : 1 : 1)
    assert "pools sized by measured throughput" in text, text[-6000:]
    assert re.search(r"plan: stages .*decode 1x0\.25, depth 4x0\.25, flow 1x0\.25, encoder 1x0\.25, writer 1x0\.25",
                     text), text[-6000:]
    assert job_status(cluster, sid) == "SUCCEEDED"
    assert set(cluster.node_ids()) == {"head"}, "the worker node was not lost"
    left = [int(n) for n in re.findall(r"There are (\d+) retries remaining", text)]
    print(f"worker lost after {done}/{N_VIDEOS} shards; the job finished {time.time() - killed_at:.0f} s later; "
          f"fewest task retries left: {min(left) if left else 'none spent'}")
    markers = check_store(root, reference)
    before = {k: m for k, m in markers.items() if m["written_at"] < killed_at}
    used = nodes_used(before)
    assert set(used) == set(ids.values()), f"stages per node before the loss: {used}, nodes: {ids}"
    after = [m for m in markers.values() if m["written_at"] > killed_at + 1]
    assert after, "no shard was written after the node was lost"
    for m in after:  # written by the head's writer (earlier stages may have run on the worker)
        assert m["nodes"]["write"]["node_id"] == ids["head"], m["nodes"]
    report = json.loads((root / "report.json").read_text())
    assert report["videos_ok"] == N_VIDEOS and report["shards_done"] == N_VIDEOS
