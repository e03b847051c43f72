"""scripts/submit.py (what `make submit` runs): `ray job submit` whose exit status says whether the job
SUCCEEDED. Against the session's real Ray head (tests/conftest.py: a `ray start --head` with its job
server), with real jobs: one that succeeds, and one stopped by `ray job stop` mid-run, which plain
`ray job submit` reports with exit status 0."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from scripts.submit import AFTER_FAILURE, kind, prepare

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def test_a_submission_id_is_added_only_when_the_flags_name_none():
    cmd, sid, address, no_wait = prepare(["ray", "job", "submit", "--address", "http://h:8265", "--", "python", "x.py",
                                          "--submission-id=not-a-flag-of-submit"])
    assert sid.startswith("crema-extract-") and cmd[3] == f"--submission-id={sid}"
    assert address == "http://h:8265" and not no_wait and cmd[-1] == "--submission-id=not-a-flag-of-submit"
    for given in (["--submission-id=mine"], ["--submission-id", "mine"]):
        argv = ["ray", "job", "submit", "--address=http://h:8265", *given, "--no-wait", "--", "true"]
        cmd, sid, address, no_wait = prepare(argv)
        assert (cmd, sid, address, no_wait) == (argv, "mine", "http://h:8265", True)


def test_a_training_job_is_named_and_advised_as_one():
    """make submit-train's entry point runs scripts/train_ray.py: its job id and failure advice say training."""
    train = ["ray", "job", "submit", "--", "env", "X=1", "sh", "scripts/ray_job.sh", "/py", "scripts/train_ray.py", "a=1"]
    extract = [*train[:-2], "scripts/extract.py", "a=1"]
    assert prepare(train)[1].startswith("crema-train-") and prepare(extract)[1].startswith("crema-extract-")
    assert "RUN_DIR" in AFTER_FAILURE[kind(train)] and "OUT" in AFTER_FAILURE[kind(extract)]


def submit(cluster, *flags_and_entrypoint: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts/submit.py"), RAY, "job", "submit",
                             "--address", cluster.dashboard_url, *flags_and_entrypoint], cwd=ROOT, env=cluster.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def status(cluster, sid: str) -> str | None:
    try:
        return cluster.api(f"/api/jobs/{sid}", timeout=5)["status"]
    except urllib.error.HTTPError as err:  # 404 until the submission reaches the server
        if err.code == 404:
            return None
        raise


@pytest.mark.slow
def test_a_stopped_job_fails_the_submission_and_a_finished_one_passes(shared_ray):
    ok = submit(shared_ray, "--", "python", "-c", "print('crema-job-ran')")
    out, _ = ok.communicate(timeout=300)
    assert ok.returncode == 0, out
    assert "crema-job-ran" in out and "SUCCEEDED" in out and "job id crema-extract-" in out

    sid = "crema-test-stopped"
    proc = submit(shared_ray, f"--submission-id={sid}", "--", "python", "-c", "import time; time.sleep(300)")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and status(shared_ray, sid) != "RUNNING":
            time.sleep(0.3)
        stop = subprocess.run([RAY, "job", "stop", "--address", shared_ray.dashboard_url, sid], env=shared_ray.env(),
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status(shared_ray, sid) == "STOPPED"
    assert proc.returncode == 1, out
    assert f"job {sid} ended STOPPED" in out and "make submit` again" in out
