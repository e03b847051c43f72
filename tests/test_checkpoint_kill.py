"""A real training process (scripts/train.py) SIGKILLed, then resumed, ends bitwise equal to an
uninterrupted run: weights, optimizer state and metrics rows (slow).

- Steps of the save protocol, hit exactly: the process kills itself at a named point
  (CREMA_TEST_KILL_AT, trainer/killpoints.py), one point per process, each resuming the last.
- Then a seeded loop of kills at random moments from outside. CI runs 3 points and 2 random
  kills in one run (each process start costs ~7 s); the documented long run (docs/training.md)
  is the same test with CREMA_KILL_LOOP_KILLS=20: all 7 points and 20 random kills.

keep_last=1 and checkpoint_every dividing the epoch: the same step is saved twice (mid-epoch,
then end of epoch), the case that used to wipe the run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_recipe import compose_train, train_overrides, write_fixture
from trainer import checkpoint
from trainer.recipe import Trainer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
COMMON = ("trainer.num_threads=1", "trainer.checkpoint_every=2", "trainer.keep_last=1")
KILLS = int(os.environ.get("CREMA_KILL_LOOP_KILLS", "2"))
SEED = int(os.environ.get("CREMA_KILL_LOOP_SEED", "0"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run (in process: the same code, the same settings, one thread)."""
    tmp = tmp_path_factory.mktemp("kill")
    cfg = compose_train(tmp, *COMMON, f"run_dir={tmp}/straight")
    write_fixture(tmp, cfg)
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg)
        trainer.train()
        trainer.test()
    finally:
        torch.set_num_threads(threads)
    return tmp / "straight"


def train_cli(store: Path, run_dir: Path, kill_at: str | None = None) -> subprocess.Popen:
    """scripts/train.py on the fixture's store; its output goes to <run_dir>.log (a pipe nobody
    reads while the test waits to kill could fill and stall it)."""
    env = {**os.environ, "CREMA_TEST_KILL_AT": kill_at or ""}
    with open(f"{run_dir}.log", "a") as log:
        return subprocess.Popen([sys.executable, str(ROOT / "scripts/train.py"),
                                 *train_overrides(store, *COMMON, f"run_dir={run_dir}")],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, run_dir: Path) -> str:
    proc.wait(timeout=600)
    return Path(f"{run_dir}.log").read_text()[-3000:]


def _rows(run_dir: Path) -> list[dict]:
    text = (run_dir / "metrics.jsonl").read_text().replace(str(run_dir), "<run>")
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in text.splitlines()]


def assert_same_run(got: Path, ref: Path) -> None:
    """Same checkpoints (names, state.json, every tensor bitwise), same metrics rows but their times."""
    names = sorted(d.name for d in (ref / "checkpoints").iterdir())
    assert sorted(d.name for d in (got / "checkpoints").iterdir()) == names  # no .tmp-*, no extra
    for name in names:
        assert checkpoint.read_state(got / "checkpoints" / name) == checkpoint.read_state(ref / "checkpoints" / name)
        for file in sorted(checkpoint.verify(ref / "checkpoints" / name)["files"]):
            a = load_file(str(got / "checkpoints" / name / file))
            b = load_file(str(ref / "checkpoints" / name / file))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), (name, file)
    assert _rows(got) == _rows(ref)


# Each process dies at one point; the next resumes. The comments say what is on disk then.
CHAIN = [
    "best:written@1",   # best-4 complete in .tmp-*, not renamed: last-4-e0 (mid-epoch) is the resume point
    "last:written@1",   # end-of-epoch save of step 4 again, complete in .tmp-*: last-4-e0 still there (case 1)
    "last:durable@1",   # last-4-e1 renamed and fsynced, last-4-e0 not pruned yet
    "metrics:torn@3",   # half a step row written (step 7): the resume drops it
    "last:tensors@1",   # last-8-e1's tensors written, no state.json: last-6-e1 is the resume point
    "last:pruned@1",    # last-8-e1 saved and last-6-e1 pruned
    "last:renamed@1",   # last-8-e2 renamed, its parent not fsynced, last-8-e1 not pruned
]
# CI: a half-made best, the same step's second save half-made (case 1), a torn row (the first
# eval row); early, so that the random kills after them have most of the run to land in
CI_CHAIN = ["best:written@1", "last:written@1", "metrics:torn@1"]


def _kill_at_random(proc: subprocess.Popen, metrics: Path, rng: random.Random, window: float) -> bool:
    """SIGKILL `proc` a random moment after it starts working (its metrics log changes); True
    when it was still running then."""
    before = metrics.stat().st_mtime_ns if metrics.exists() else 0
    while proc.poll() is None and (metrics.stat().st_mtime_ns if metrics.exists() else 0) == before:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, window))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_killed_runs_resume_to_the_uninterrupted_run(straight):
    """One run killed at protocol points, then at seeded random moments, then finished."""
    store, run_dir = straight.parent, straight.parent / "killed"
    for point in CHAIN if KILLS >= 20 else CI_CHAIN:
        proc = train_cli(store, run_dir, point)
        out = _finish(proc, run_dir)
        assert proc.returncode == -signal.SIGKILL, f"{point} was never reached:\n{out}"
    rng, kills, runs = random.Random(SEED), 0, 0
    while True:
        runs += 1
        assert runs <= 5 * KILLS + 5, f"{kills} random kills in {runs} runs: the runs end before the kills land"
        proc = train_cli(store, run_dir)
        if kills < KILLS and _kill_at_random(proc, run_dir / "metrics.jsonl", rng, window=4.0):
            kills += 1
            continue
        out = _finish(proc, run_dir)
        assert proc.returncode == 0, out
        if kills >= KILLS:
            break
    print(f"seed {SEED}: {kills} random kills in {runs} runs")
    assert_same_run(run_dir, straight)
    _corrupt_best_is_exit_3(store, run_dir)


def _corrupt_best_is_exit_3(store: Path, run_dir: Path) -> None:
    """A corrupt best is an error line naming the file, with its own exit code (not a result)."""
    best = checkpoint.resolve(run_dir / "checkpoints", "best")
    data = bytearray((best / "model.safetensors").read_bytes())
    data[-3] ^= 0x40
    (best / "model.safetensors").write_bytes(bytes(data))
    overrides = [o for o in train_overrides(store, f"run_dir={run_dir}") if not o.startswith("model.")]
    ev = subprocess.run([sys.executable, str(ROOT / "scripts/eval.py"), *overrides, "eval.split=val"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 3 and f"error: {best}/model.safetensors differs from the sha256" in ev.stderr, ev.stderr[-2000:]
