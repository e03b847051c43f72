"""Poison videos through the real CLI and a real local Ray: a video that segfaults its decoder and
one that hangs it, among good ones (the fault is injected through the config: tests/faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.store import FeatureStore
from media import write_video

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_segfaulting_and_a_hanging_video_cost_only_themselves(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "good_a.mp4")
    write_video(folder / "good_b.mp4", step=3)
    shutil.copy(folder / "good_a.mp4", folder / "poison_segfault.mp4")
    shutil.copy(folder / "good_b.mp4", folder / "poison_hang.mp4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/extract.py"), "dataset=videos", f"dataset.path={folder}",
         f"out={tmp_path / 'out'}", "ray.num_cpus=2", "features.modalities=[rgb]", "features.decode.num_frames_stored=4",
         "+features.decode.decoder=faults:faulty_decode", "features.decode.resources.timeout_s=15",
         "max_failed_fraction=0.5", "store.shard_size=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "videos"
    rows = {r["video_id"]: r for r in map(json.loads, (root / "failures.jsonl").read_text().splitlines())}
    assert set(rows) == {"poison_segfault.mp4", "poison_hang.mp4"}
    assert rows["poison_segfault.mp4"]["stage"] == "decode" and "SIGSEGV" in rows["poison_segfault.mp4"]["reason"]
    assert rows["poison_hang.mp4"]["stage"] == "decode" and "time limit" in rows["poison_hang.mp4"]["reason"]
    assert all(r["fatal"] for r in rows.values())
    assert FeatureStore(root).video_ids == ["good_a.mp4", "good_b.mp4"]  # every good video extracted


def test_an_actor_killed_mid_run_costs_a_rerun_of_its_unfinished_shards_not_the_run(tmp_path):
    """An actor that dies (killed, as Ray's memory monitor does) while Ray restarts none
    (max_restarts 0, what a local Ray gets): the driver runs the unfinished shards again and the
    run completes with every video, saying so in one line of its own."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(3):
        write_video(folder / f"v{i}.mp4", step=i + 1)
    (folder / "v1.mp4.killactor").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/extract.py"), "dataset=videos", f"dataset.path={folder}",
         f"out={tmp_path / 'out'}", "ray.num_cpus=2", "features.modalities=[rgb]", "features.decode.num_frames_stored=2",
         "+features.decode.decoder=faults:kill_actor_once", "store.shard_size=1", "+plan.fused.max_restarts=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (folder / "v1.mp4.killactor").exists()  # the kill happened
    said = proc.stdout + proc.stderr  # Hydra logs to stdout
    assert "a Ray actor died" in said and "unfinished shards again (1 of 3 retries)" in said
    assert FeatureStore(tmp_path / "out" / "videos").video_ids == ["v0.mp4", "v1.mp4", "v2.mp4"]
