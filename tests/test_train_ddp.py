"""Data-parallel training for real: torchrun, gloo, 2 and 3 CPU ranks of the tiny model.

One module fixture runs everything once (torchrun's start and each rank's imports cost seconds);
the multi-rank runs are real `make train NPROC=<n>` commands on a small store of random features:
- `ref`: one process (in this pytest process), 2 epochs of 2 steps, global batch 12;
- `ddp`: 2 ranks, killed by a real SIGKILL in the middle of saving step 2's checkpoint (step 1's
  on disk, step 2's row written after it), resumed by 2 ranks up to step 3, finished by ONE
  process (a 2-rank checkpoint resumed by 1 rank);
- `back`: a copy of `ref` resumed from its step-1 checkpoint by 3 ranks (a 1-rank checkpoint
  resumed by an odd number of ranks) and run to the end, test evaluation included.
The 16 training questions make the epoch's second step 4 questions: 2 + 2 on 2 ranks, 2 + 1 + 1
on 3; the 4 validation and 4 test questions split 2 + 1 + 1 too.

Tolerance: the ranks add the same per-question gradients in another order (float32), so losses
agree to 1e-5 relative and weights to 1e-5 absolute after 4 AdamW steps, not bitwise. LoRA
dropout is off: each rank draws its own dropout masks, so with dropout the curves agree only in
distribution.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_recipe import compose_train, train_overrides, write_fixture
from trainer import checkpoint
from trainer.data import EpochSampler, eval_loader, rank_share
from trainer.recipe import Trainer

ROOT = Path(__file__).resolve().parents[1]
COMMON = ("trainer.global_batch=12", "trainer.batch_size=2", "trainer.num_threads=1", "trainer.checkpoint_every=1",
          "trainer.keep_last=10", "model.lora_dropout=0.0")
RTOL, ATOL = 1e-5, 1e-5


def test_make_train_nproc_is_torchrun():
    def make(*args: str) -> str:
        out = subprocess.run(["make", "--no-print-directory", "-n", "train", *args], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        return next(line for line in out.splitlines() if "scripts/train.py" in line)

    assert make().startswith(".venv/bin/python scripts/train.py ")
    assert make("NPROC=1").startswith(".venv/bin/python scripts/train.py ")
    assert make("NPROC=2", "ARGS=seed=3").startswith(
        ".venv/bin/python scripts/torchrun.py --nproc_per_node=2 --standalone scripts/train.py ")
    assert " --nproc_per_node=4 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=29501 scripts/train.py " in \
        make("NPROC=4", "NNODES=2", "NODE_RANK=1", "MASTER_ADDR=10.0.0.1", "MASTER_PORT=29501")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_step_reads_the_single_process_step_s_questions_once(world):
    """16 questions, global batch 6: steps of 6, 6, 4 whatever the ranks; a resume at a step
    boundary (sample 6) reads the rest of the same order."""
    size, batch = 16, 6
    for start in (0, 6):
        order = EpochSampler(size, shuffle=True, seed=3)
        order.set_position(2, start)
        whole = list(order)
        shares = []
        for rank in range(world):
            sampler = EpochSampler(size, shuffle=True, seed=3, rank=rank, world=world)
            sampler.set_position(2, start)
            shares.append(list(sampler))
            assert len(sampler) == len(shares[-1])
        for begin in range(start, size, batch):
            end = min(begin + batch, size)
            counts = [rank_share(begin, end, r, world) for r in range(world)]
            step = [q for r in range(world) for q in shares[r][:counts[r]]]
            shares = [share[c:] for share, c in zip(shares, counts)]
            assert sorted(step) == sorted(whole[begin - start:end - start])
        assert not any(shares)


def test_evaluation_shards_cover_a_split_once():
    questions = list(range(7))
    shards = [list(eval_loader(questions, 2, 0, rank=r, world=3).dataset) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]  # evaluate_split interleaves them back: question i from rank i % 3


def test_a_global_batch_the_ranks_cannot_divide_is_refused(tmp_path, monkeypatch):
    """Before any process group forms (every rank leaves with the same error): torchrun's
    WORLD_SIZE is what the trainer reads."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"global_batch=12 is not a multiple of trainer.batch_size=4 x 2 ranks"):
        Trainer(compose_train(tmp_path, "trainer.global_batch=12", "trainer.batch_size=4"))


GROUP_SCRIPT = """
import torch
from trainer import distributed

distributed.setup("cpu")
def refuse():
    raise ValueError("refused on rank 0")
try:
    distributed.on_main(refuse)
except ValueError as exc:
    print(f"rank {distributed.rank()}: {exc}")
total = distributed.all_reduce_sum(torch.tensor([distributed.rank() + 1.0])).item()
print(f"rank {distributed.rank()}: sum {total} gathered {distributed.all_gather_objects(distributed.rank())}")
distributed.teardown()
"""


@pytest.mark.slow
def test_an_error_on_rank_0_reaches_every_rank(tmp_path):
    """trainer/distributed.py under a real torchrun: a user error raised where rank 0 alone
    decides (the resume point) is raised on every rank, so none waits for rank 0 forever."""
    script = tmp_path / "group.py"
    script.write_text(GROUP_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                          str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: refused on rank 0" in out.stdout
        assert f"rank {rank}: sum 3.0 gathered [0, 1]" in out.stdout


def torchrun(tmp: Path, nproc: int, *overrides: str, kill_at: str = "", make: bool = True) -> subprocess.CompletedProcess:
    """`make train NPROC=<nproc>` on the fixture's store (its overrides through ARGS); make=False:
    the command make runs (make's own exit code is 2 for any failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CREMA_TEST_KILL_AT": kill_at}
    args = train_overrides(tmp, *COMMON, *overrides)
    if make:
        args = " ".join(a for a in args if a != "dataset=nextqa")  # make's DATASET
        cmd = ["make", "--no-print-directory", "train", f"NPROC={nproc}", "DATASET=nextqa", "FEATURES=tiny",
               f"OUT={tmp}", f"ARGS={args}"]
    else:
        cmd = [sys.executable, "scripts/torchrun.py", f"--nproc_per_node={nproc}", "--standalone", "scripts/train.py",
               *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def in_process(tmp: Path, *overrides: str) -> Trainer:
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(compose_train(tmp, *COMMON, *overrides))
        if trainer.train().finished:
            trainer.test()
    finally:
        torch.set_num_threads(threads)
    return trainer


def rows(run_dir: Path, event: str) -> list[dict]:
    """The complete rows of `event` (a kill may have left half a row at the end), without their times."""
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True) if line.endswith("\n")]
    parsed = [json.loads(line) for line in lines]
    return [{k: v for k, v in row.items() if k != "time"} for row in parsed if row["event"] == event]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    write_fixture(tmp, compose_train(tmp, *COMMON))
    out = {"tmp": tmp, "ref": tmp / "ref", "ddp": tmp / "ddp", "back": tmp / "back"}
    in_process(tmp, f"run_dir={out['ref']}")

    # step 1 saved; step 2 done and its row written; its checkpoint's tensors written, no state.json
    out["killed"] = torchrun(tmp, 2, f"run_dir={out['ddp']}", kill_at="last:tensors@2")
    out["killed_steps"] = rows(out["ddp"], "step")
    out["resumed"] = torchrun(tmp, 2, f"run_dir={out['ddp']}", "trainer.max_steps=3")
    out["resumed_steps"] = rows(out["ddp"], "step")
    in_process(tmp, f"run_dir={out['ddp']}")

    shutil.copytree(out["ref"], out["back"])
    start = out["back"] / "checkpoints" / checkpoint.name("last", 1, 0)
    out["three"] = torchrun(tmp, 3, f"run_dir={out['back']}", f"trainer.resume={start}")
    return out


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _close_rows(got: list[dict], ref: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(got, ref):
        for key in keys:
            assert a[key].keys() == b[key].keys(), (a["step"], key)
            for name in b[key]:
                assert a[key][name] == pytest.approx(b[key][name], rel=RTOL, abs=ATOL), (a["step"], key, name)


def _close_weights(got: Path, ref: Path) -> None:
    a = load_file(str(checkpoint.resolve(got / "checkpoints", "last") / "model.safetensors"))
    b = load_file(str(checkpoint.resolve(ref / "checkpoints", "last") / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k].float() - b[k].float()).abs().reshape(-1) for k in b])
    # AdamW divides by the root of the squared-gradient average: a gradient that is rounding noise
    # (~1e-9) becomes a step of any size up to lr, so a few elements differ by up to a few lr
    # (1e-2 here); nearly all agree to 1e-5
    far = float((diff > ATOL).float().mean())
    assert far <= 0.01 and float(diff.max()) <= 3e-2, (far, float(diff.max()))
    moved = load_file(str(ref / "checkpoints" / checkpoint.name("last", 1, 0) / "model.safetensors"))
    assert any(not torch.equal(moved[k], b[k]) for k in b)  # the compared steps did train


@pytest.mark.slow
def test_two_ranks_follow_the_single_process_loss_curve_and_weights(runs):
    """Killed at step 2, resumed by 2 ranks to step 3, finished by 1 process: the loss, the
    per-modality gradient norms and the weights are the single-process run's."""
    ref = rows(runs["ref"], "step")
    assert len(ref) == 4
    _close_rows(rows(runs["ddp"], "step"), ref, ("loss", "grad_norm"))
    _close_weights(runs["ddp"], runs["ref"])
    for event in ("eval", "test"):
        got, want = rows(runs["ddp"], event), rows(runs["ref"], event)
        assert [(r["n"], r["strict"]) for r in got] == [(r["n"], r["strict"]) for r in want]


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_exactly(runs):
    killed, resumed = runs["killed"], runs["resumed"]
    assert killed.returncode != 0  # rank 0 was SIGKILLed; torchrun stopped the other rank
    assert [r["step"] for r in runs["killed_steps"]] == [1, 2]  # step 2 was done after the checkpoint of step 1
    _ok(resumed)
    assert "stopped at trainer.max_steps=3" in resumed.stdout
    assert resumed.stdout.count("stopped at") == 1  # one writer: rank 0
    assert f"resumed from {runs['ddp'] / 'checkpoints' / checkpoint.name('last', 1, 0)}" in resumed.stderr
    # the redone step 2 is bit for bit the killed run's step 2 (same ranks, same order of additions)
    assert runs["resumed_steps"][:2] == runs["killed_steps"]
    assert [r["step"] for r in runs["resumed_steps"]] == [1, 2, 3]


@pytest.mark.slow
def test_three_ranks_resume_a_single_process_checkpoint_and_score_every_question_once(runs):
    _ok(runs["three"])
    back, ref = runs["back"], runs["ref"]
    _close_rows(rows(back, "step"), rows(ref, "step"), ("loss", "grad_norm"))
    _close_weights(back, ref)
    for event in ("eval", "final_val", "test"):
        got, want = rows(back, event), rows(ref, event)
        assert [r["n"] for r in got] == [r["n"] for r in want] == [4] * len(want)  # 2 + 1 + 1, each once
        assert [(r["strict"], r["lenient"]) for r in got] == [(r["strict"], r["lenient"]) for r in want]
    assert (back / "report.md").read_text().count("# Results of") == 1
    assert not list((back / "checkpoints").glob(".tmp-*"))
    assert (back / "curves.png").exists()


@pytest.mark.slow
def test_a_global_batch_two_ranks_cannot_divide_is_one_error_line(runs):
    proc = torchrun(runs["tmp"], 2, f"run_dir={runs['tmp']}/bad", "trainer.batch_size=4", make=False)
    assert proc.returncode == 2, proc.stderr[-3000:]  # the training processes' code, not torchrun's 1
    assert "error: trainer.global_batch=12 is not a multiple of trainer.batch_size=4 x 2 ranks" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
