"""Training on a cluster, the fast parts: trainer/shared_storage.py (a node sees the launching
node's store and run folder, or the launch stops with an `error:` naming the node and the path;
real files, and the CLI as scripts/slurm_train.sbatch runs it on every node), trainer/ray_launch.py's
checks and conf/train_ray.yaml. The cluster runs themselves: tests/test_cluster_e2e.py, tests/test_slurm.py."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core.store import STORE_META
from trainer import shared_storage
from trainer.ray_launch import RayTrainConfig, WorkerError, check_paths, user_error

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def launched(tmp_path):
    """A store (its store.json) and a run folder marked by the 'launching node'."""
    store = tmp_path / "feats" / "demo"
    store.mkdir(parents=True)
    (store / STORE_META).write_text('{"dataset": "demo"}\n')
    run_dir = tmp_path / "run"
    token = shared_storage.mark(run_dir)
    return store, run_dir, token, shared_storage.store_digest(store)


def test_a_node_that_sees_both_has_no_problem(launched):
    assert shared_storage.check(*launched) == []


@pytest.mark.parametrize("case, expect", [
    ("no store", "cannot see the feature store"),
    ("other store", "sees another feature store"),
    ("other run folder", "does not see the launching node's run folder"),
])
def test_a_node_that_does_not_is_named_with_the_path(launched, tmp_path, case, expect):
    store, run_dir, token, digest = launched
    if case == "no store":
        (store / STORE_META).unlink()
    elif case == "other store":  # a node-local folder of the same name, with other features
        (store / STORE_META).write_text('{"dataset": "demo", "other": 1}\n')
    else:  # a node-local run folder: the token is not there
        run_dir = tmp_path / "elsewhere"
        run_dir.mkdir()
    problems = shared_storage.check(store, run_dir, token, digest)
    assert len(problems) == 1 and expect in problems[0], problems
    assert socket.gethostname() in problems[0]
    assert str(store if case != "other run folder" else run_dir) in problems[0]


def test_the_cli_marks_then_checks_and_fails_with_error_lines(launched, tmp_path, capsys):
    store, run_dir, _, _ = launched
    cli = [sys.executable, "-m", "trainer.shared_storage"]
    marked = subprocess.run([*cli, "mark", "--store", str(store), "--run-dir", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    token, digest = marked.stdout.split()
    assert digest == shared_storage.store_digest(store)
    ok = subprocess.run([*cli, "check", "--store", str(store), "--run-dir", str(run_dir), "--token", token,
                         "--store-digest", digest], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cli, "check", "--store", str(tmp_path / "nowhere"), "--run-dir", str(run_dir), "--token",
                          "0" * 16, "--store-digest", digest], cwd=ROOT, capture_output=True, text=True)
    lines = bad.stderr.splitlines()
    assert bad.returncode == 2 and len(lines) == 2 and all(line.startswith("error: node ") for line in lines), bad.stderr
    assert "Traceback" not in bad.stderr
    capsys.readouterr()
    assert shared_storage.main(["mark", "--store", str(tmp_path / "nowhere"), "--run-dir", str(run_dir)]) == 2
    assert capsys.readouterr().err.startswith(f"error: no feature store at {tmp_path / 'nowhere'}")


def test_relative_paths_are_refused_for_a_cluster_job():
    cfg = OmegaConf.create({"store": "outputs/features/demo", "run_dir": "/shared/run"})
    with pytest.raises(ValueError, match="store=outputs/features/demo is relative"):
        check_paths(cfg)
    cfg.store, cfg.run_dir = "/shared/features/demo", "outputs/train/demo"
    with pytest.raises(ValueError, match="run_dir=outputs/train/demo is relative"):
        check_paths(cfg)


def test_a_worker_error_is_found_inside_ray_wrappers():
    from ray.train import WorkerGroupError

    mine = WorkerError("on n1: no feature store at /x", 2)
    wrapped = RuntimeError("task failed")
    wrapped.cause = mine
    assert user_error(WorkerGroupError("rank 0", {0: wrapped})) is mine
    assert user_error(WorkerGroupError("rank 0", {0: RuntimeError("oom")})) is None
    assert RayTrainConfig.from_cfg(OmegaConf.create({"workers": 2})).workers == 2
    with pytest.raises(ValueError, match="workers=0"):
        RayTrainConfig.from_cfg(OmegaConf.create({"workers": 0}))


@pytest.mark.parametrize("overrides", [[], ["dataset=nextqa", "features=full"]])
def test_train_ray_config_is_the_training_config_plus_where_the_workers_run(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train = OmegaConf.to_container(compose(config_name="train", overrides=overrides))
        ray_train = OmegaConf.to_container(compose(config_name="train_ray", overrides=overrides))
    conf = RayTrainConfig(**ray_train.pop("ray_train"))
    assert ray_train == train and conf.workers == 1 and conf.gpus_per_worker == 0

