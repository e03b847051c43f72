"""scripts/slurm_extract.sbatch end to end on a real Slurm (slow; `make slurm-local` gives one on this host).

Submits the real script for a 3-video demo (rgb only) with `sbatch --wait` on one node and no GPU, and checks
the exit status, the store's report and that the log shows the Ray readiness check passing. The
job's Ray uses its own ports, temp dir and auth token; a bogus RAY_ADDRESS in the submit
environment must be ignored (the script sets its own), so a Ray this test session runs is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOW = "`make slurm-local` sets up a single-host Slurm (Debian/Ubuntu, as root)"


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in out


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason=f"no sbatch on PATH: {HOW}"),
]


def test_sbatch_demo_extracts_on_one_node(tmp_path):
    if not _slurm_up():
        pytest.skip(f"sbatch is here but no slurmctld answers `scontrol ping`: {HOW}")
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a stale address the job must not use
    cmd = ["sbatch", "--wait", "--parsable", "--nodes=1", "--cpus-per-task=2", "--time=30",
           "--job-name=crema-test-slurm", f"--output={tmp_path}/slurm-%j.out",
           "scripts/slurm_extract.sbatch", "demo", str(out),
           f"dataset.root={tmp_path / 'demo'}", "dataset.num_videos=3", "features.decode.num_frames_stored=4",
           "features.modalities=[rgb]"]  # the smallest real pipeline: decode, encoder, writer
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    job = proc.stdout.strip().split(";")[0]
    logs = list(tmp_path.glob("slurm-*.out"))
    log = logs[0].read_text() if logs else "(no Slurm log)"
    assert proc.returncode == 0, f"sbatch --wait: {proc.returncode}\n{proc.stderr[-2000:]}\n{log[-6000:]}"
    assert "ready: 1/1 Ray node(s) alive (head)" in log, log[-6000:]
    assert "extract finished in" in log and "Ray stopped; exit status 0" in log, log[-6000:]
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["videos_total"] == report["videos_ok"] == 3, report
    assert report["videos_failed"] == 0 and report["videos_pending"] == 0, report
    assert report["shards_done"] == report["shards_total"], report
    assert not Path(f"/tmp/ray-crema-{job}").exists(), "the job's Ray temp dir was not removed after success"
