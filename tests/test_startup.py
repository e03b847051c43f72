"""Start-up (issue 24): what a cold `make extract` pays before its first shard, and the lines Ray
prints on a healthy local run (issue 21).

The end-to-end test is the one run here that starts its own local Ray, as a user's run does
(every other CLI test joins the session's Ray): a few demo videos, rgb only, so it stays short.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sandbox import Sandbox
from scripts.bench_startup import ray_alerts

ROOT = Path(__file__).resolve().parents[1]
# Modules a tiny extract's driver never needs: the models and the web app load in the actors or
# in other programs only.
NOT_IN_DRIVER = ("torch", "transformers", "open3d", "ptlflow", "gradio", "torchcodec", "decord")


def test_ray_alerts_are_rays_warning_and_error_lines_only():
    out = ("2026-12-02 02:54:11,951\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled\n"
           "extract demo:   0%|  | 0/17 [00:00<?, ?shard/s][2026-12-02 02:54:19,356 E 9643 9643] core_worker.cc:2465: "
           "Actor with class name: 'MapWorker(MapBatches(FusedStage))' has constructor arguments\n"
           "[2026-12-02 03:00:20,930][crema.extract][WARNING] - 3 videos changed since they were extracted\n"
           "2026-12-02 02:54:17,108\tINFO worker.py:2038 -- Started a local Ray instance.\n"
           "(MapWorker pid=12) 2026-12-02 02:54:20,001\tERROR actor.py:10 -- something\n")
    found = ray_alerts(out)
    assert len(found) == 3
    assert "authentication_token_setup.py:85" in found[0] and "core_worker.cc" in found[1]
    assert "ERROR actor.py:10" in found[2]


def test_a_sandbox_child_started_ahead_has_its_decoder_imported_before_the_first_call():
    box = Sandbox(timeout_s=60, preload=("pipeline.decode:decode_video", "av:open"))
    box.start()
    try:
        assert box.call("pipeline.sandbox:loaded", ["pipeline.decode", "av", "torch"]) == ["pipeline.decode", "av"]
    finally:
        box.close()
    cold = Sandbox(timeout_s=60)  # no preload: nothing imported until a call needs it
    try:
        assert cold.call("pipeline.sandbox:loaded", ["pipeline.decode", "av"]) == []
    finally:
        cold.close()


def _driver_modules(importtime_stderr: str) -> set[str]:
    """The modules the driver imported, from `python -X importtime`'s lines."""
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", importtime_stderr, flags=re.M))


def _driver_imports(importtime_stderr: str) -> set[str]:
    """Top-level packages the driver imported."""
    return {n.split(".")[0] for n in _driver_modules(importtime_stderr)}


@pytest.mark.slow
def test_a_cold_local_extract_prints_no_ray_warning_and_reports_its_start_up(tmp_path):
    """`make extract` as a user runs it (own Ray, no RAY_ADDRESS): no WARNING/ERROR line of Ray's
    own, a driver that imports no model library, and report.json's start-up breakdown."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    cmd = [sys.executable, "-X", "importtime", str(ROOT / "scripts/extract.py"), "dataset=demo",
           f"dataset.root={tmp_path}/demo", "dataset.num_videos=4", "dataset.modalities=[rgb]",
           f"out={tmp_path}/features", "store.shard_size=2", "ray.num_cpus=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ray_alerts(proc.stdout + proc.stderr) == []
    assert not _driver_imports(proc.stderr) & set(NOT_IN_DRIVER)
    # the fused plan runs on Ray core actors: Ray Data (its import, helper actors, executor thread) is not started
    assert "ray.data" not in _driver_modules(proc.stderr)
    run = json.loads((tmp_path / "features" / "demo" / "report.json").read_text())["run"]
    assert {"process_to_run", "prepare", "ray_init", "to_first_shard"} <= set(run["phases_s"])
    assert run["phases_s"]["ray_init"] > 0
    actors = run["actor_startup"]
    assert actors and {a["stage"] for a in actors} == {"fused"}
    assert all(a["process_s"] > 0 and a["init_s"] >= a["build_s"] > 0 for a in actors)

