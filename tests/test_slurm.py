"""scripts/slurm_extract.sbatch and scripts/slurm_train.sbatch end to end on a real Slurm (slow;
`make slurm-local` gives one on this host).

Submits the real extraction script for a 3-video demo (rgb only) with `sbatch --wait` on one node and no GPU, and checks
the exit status, the store's report and that the log shows the Ray readiness check passing; then
trains on that store with the real training script (srun + torchrun). The
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


EXTRACT_ARGS = ["dataset.num_videos=3", "features.decode.num_frames_stored=4",
                "features.modalities=[rgb]"]  # the smallest real pipeline: decode, encoder, writer
# Ranks per node for scripts/slurm_train.sbatch (data-parallel under torchrun, gloo on CPUs).
TRAIN_NPROC = 2


def sbatch(tmp: Path, script: str, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str, str]:
    """`sbatch --wait` of one of the scripts on one node: (the process, the job id, its log)."""
    cmd = ["sbatch", "--wait", "--parsable", "--nodes=1", "--cpus-per-task=2", "--time=30",
           f"--job-name=crema-test-{script.split('_')[1].split('.')[0]}", f"--output={tmp}/slurm-%j.out",
           f"scripts/{script}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env or dict(os.environ))
    job = proc.stdout.strip().split(";")[0]
    logs = list(tmp.glob(f"slurm-{job}.out")) if job else []
    return proc, job, logs[0].read_text() if logs else "(no Slurm log)"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The demo extracted by scripts/slurm_extract.sbatch (3 videos, rgb only): (tmp, out, job, sbatch, log)."""
    if not _slurm_up():
        pytest.skip(f"sbatch is here but no slurmctld answers `scontrol ping`: {HOW}")
    tmp = tmp_path_factory.mktemp("slurm")
    out = tmp / "out"
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a stale address the job must not use
    proc, job, log = sbatch(tmp, "slurm_extract.sbatch", "demo", str(out), f"dataset.root={tmp / 'demo'}",
                            *EXTRACT_ARGS, env=env)
    return tmp, out, job, proc, log


def test_sbatch_demo_extracts_on_one_node(extracted):
    tmp, out, job, proc, log = extracted
    assert proc.returncode == 0, f"sbatch --wait: {proc.returncode}\n{proc.stderr[-2000:]}\n{log[-6000:]}"
    assert "ready: 1/1 Ray node(s) alive (head)" in log, log[-6000:]
    assert "extract finished in" in log and "Ray stopped; exit status 0" in log, log[-6000:]
    report = json.loads((out / "demo" / "report.json").read_text())
    assert report["videos_total"] == report["videos_ok"] == 3, report
    assert report["videos_failed"] == 0 and report["videos_pending"] == 0, report
    assert report["shards_done"] == report["shards_total"], report
    assert not Path(f"/tmp/ray-crema-{job}").exists(), "the job's Ray temp dir was not removed after success"


def test_sbatch_trains_with_torchrun_on_the_extracted_store(extracted):
    """scripts/slurm_train.sbatch on the store the extraction job wrote: srun checks the shared
    store and run folder on every node, torchrun runs scripts/train.py, the job's exit status is
    the training's and the run folder holds a checkpoint that loads. A missing store stops the
    job before torchrun with an `error:` line."""
    import torch

    from trainer import checkpoint
    from trainer.evaluate import load_for_eval

    tmp, out, _, extract, _ = extracted
    assert extract.returncode == 0, "the extraction job failed (test_sbatch_demo_extracts_on_one_node)"
    run_dir = tmp / "run"
    env = {**os.environ, "CREMA_NPROC_PER_NODE": str(TRAIN_NPROC)}
    args = [f"dataset.root={tmp / 'demo'}", *EXTRACT_ARGS, "model.modalities=[rgb]", "trainer.epochs=1",
            f"trainer.batch_size={8 // TRAIN_NPROC}", "trainer.global_batch=8",
            "trainer.data.num_workers=0"]
    proc, _, log = sbatch(tmp, "slurm_train.sbatch", "demo", str(out), f"run_dir={run_dir}", *args, env=env)
    assert proc.returncode == 0, f"sbatch --wait: {proc.returncode}\n{proc.stderr[-2000:]}\n{log[-6000:]}"
    assert f"x {TRAIN_NPROC} rank(s)" in log and "shared storage: 1 node(s) see the store" in log, log[-6000:]
    assert "torch.distributed.run --nnodes=1" in log and "training finished in" in log, log[-6000:]
    assert "with exit status 0" in log, log[-6000:]
    model, _, state = load_for_eval(checkpoint.resolve(run_dir / "checkpoints", "last"), torch.device("cpu"))
    assert state["step"] >= 1 and "rgb" in model.modalities
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["event"] == "step" for r in rows) and (run_dir / "report.md").is_file()

    proc, _, log = sbatch(tmp, "slurm_train.sbatch", "demo", str(tmp / "no_features"), f"run_dir={tmp / 'run2'}",
                          *args, env=env)
    assert proc.returncode != 0 and f"error: no feature store at {tmp / 'no_features' / 'demo'}" in log, log[-3000:]
    assert "torch.distributed.run" not in log, "training started without a store"
