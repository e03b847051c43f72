"""Training on a Ray cluster: the same training entry, run by Ray Train's TorchTrainer workers.

scripts/train_ray.py (the entry point of `make submit-train`) calls `launch(cfg)` on the node the
Ray job runs on. It joins the cluster, checks that every node able to host a worker sees the
store and the run folder (trainer/shared_storage.py), then lets TorchTrainer place
`ray_train.workers` workers on the cluster, set up the process group (gloo on CPUs, NCCL on
GPUs) and run `worker_loop` in each. The run folder is the contract: rank 0 writes checkpoints,
metrics.jsonl and the report there, as `make train` does; a restarted worker group
(`ray_train.max_failures`) resumes from the run's own last checkpoint. docs/training.md says why
TorchTrainer rather than torchrun inside the job.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer import shared_storage

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """A user-fixable error (bad store, missing weights, checkpoint of another run) on a worker,
    carried to the driver as plain text so that it prints as one `error:` line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        return (self.__class__, (str(self), self.exit_code))


@dataclass(frozen=True)
class RayTrainConfig:
    """conf/train_ray.yaml's `ray_train` node."""

    address: str = "auto"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement: str = "SPREAD"
    max_failures: int = 0

    @classmethod
    def from_cfg(cls, node) -> "RayTrainConfig":
        conf = cls(**OmegaConf.to_container(node, resolve=True))
        if conf.workers < 1:
            raise ValueError(f"ray_train.workers={conf.workers}: give at least 1")
        return conf


def check_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """(store, run_dir), refused unless absolute: the job's working directory is a temporary
    upload on one node, so a relative path would name a different folder on every node."""
    paths = {"store": cfg.store, "run_dir": cfg.run_dir}
    for key, value in paths.items():
        if not Path(str(value)).is_absolute():
            raise ValueError(f"{key}={value} is relative: a Ray job runs in a temporary copy of the code, so give "
                             f"an absolute path on storage every node mounts (make submit-train makes OUT and "
                             f"RUN_DIR absolute)")
    return Path(cfg.store), Path(cfg.run_dir)


def _worker_nodes(conf: RayTrainConfig) -> list[dict]:
    """Alive nodes with room for one worker (the nodes TorchTrainer may place workers on)."""
    import ray

    fits = []
    for node in ray.nodes():
        res = node.get("Resources", {})
        if node.get("Alive") and res.get("CPU", 0) >= conf.cpus_per_worker and res.get("GPU", 0) >= conf.gpus_per_worker:
            fits.append(node)
    return fits


def preflight(store: Path, run_dir: Path, digest: str, conf: RayTrainConfig) -> list[str]:
    """Check on every node that can host a worker that it sees the store (`digest`: its
    store.json's) and the run folder the driver sees; returns the hosts checked, raises
    SharedStorageError naming every node that does not."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = shared_storage.mark(run_dir)
    try:
        nodes = _worker_nodes(conf)
        if not nodes:
            raise shared_storage.SharedStorageError(
                f"no alive Ray node has {conf.cpus_per_worker} CPU(s) and {conf.gpus_per_worker} GPU(s) free for a "
                "worker; lower ray_train.cpus_per_worker / gpus_per_worker or add nodes")
        probe = ray.remote(num_cpus=0)(_probe)
        calls = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                 .remote(str(store), str(run_dir), token, digest) for n in nodes]
        results = ray.get(calls, timeout=300)
    finally:
        shared_storage.unmark(run_dir, token)
    problems = [p for _, found in results for p in found]
    if problems:
        raise shared_storage.SharedStorageError("; ".join(problems) + "; " + shared_storage.advice())
    return [host for host, _ in results]


def _probe(store: str, run_dir: str, token: str, digest: str) -> tuple[str, list[str]]:
    return socket.gethostname(), shared_storage.check(Path(store), Path(run_dir), token, digest)


def run_training(cfg: DictConfig) -> None:
    """The training entry of `make train` (trainer/entry.py) in this worker: Ray Train has
    formed the process group, which trainer/distributed.setup() joins."""
    from trainer.entry import run

    run(cfg)


def worker_loop(config: dict) -> None:
    """What each TorchTrainer worker runs: the training entry on the job's config. User-fixable
    errors come back to the driver as WorkerError (one `error:` line, not a Ray traceback)."""
    from core.hub import ModelUnavailableError
    from core.store import StoreError
    from trainer.checkpoint import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    cfg = OmegaConf.create(config)
    try:
        run_training(cfg)
    except (StoreError, ModelUnavailableError, CheckpointError, ValueError) as exc:
        raise WorkerError(f"on {socket.gethostname()}: {exc}", getattr(exc, "exit_code", 2)) from None


def user_error(exc: BaseException) -> WorkerError | None:
    """The first WorkerError among a failed fit's worker failures (Ray wraps them), else None."""
    seen = [exc, *getattr(exc, "worker_failures", {}).values()]
    while seen:
        e = seen.pop(0)
        if isinstance(e, WorkerError):
            return e
        seen += [c for c in (getattr(e, "cause", None), e.__cause__) if c is not None]
    return None


def launch(cfg: DictConfig) -> None:
    """Join the Ray cluster, check shared storage, and train with `ray_train.workers` workers."""
    conf = RayTrainConfig.from_cfg(cfg.ray_train)
    store, run_dir = check_paths(cfg)
    digest = shared_storage.store_digest(store)  # the driver's own view first: no cluster needed to refuse
    import ray

    ray.init(address=conf.address, logging_level=logging.WARNING)
    hosts = preflight(store, run_dir, digest, conf)
    print(f"shared storage: {len(hosts)} node(s) see the store and the run folder: {', '.join(sorted(hosts))}",
          flush=True)
    trainer = torch_trainer(cfg, conf, run_dir)
    print(f"ray train: {conf.workers} worker(s) x {conf.cpus_per_worker} CPU + {conf.gpus_per_worker} GPU, "
          f"placement {conf.placement}, run folder {run_dir}", flush=True)
    try:
        trainer.fit()
    except Exception as exc:
        found = user_error(exc)
        if found is None:
            raise
        raise found from None


def torch_trainer(cfg: DictConfig, conf: RayTrainConfig, run_dir: Path):
    """Ray Train's TorchTrainer running `worker_loop` on the resolved config. Ray Train's own
    storage (a marker file only: checkpoints are the trainer's) goes under the run folder."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    plain = OmegaConf.to_container(cfg, resolve=True)
    return TorchTrainer(
        worker_loop, train_loop_config=plain,
        scaling_config=ScalingConfig(num_workers=conf.workers, use_gpu=conf.gpus_per_worker > 0,
                                     resources_per_worker=_resources(conf), placement_strategy=conf.placement),
        run_config=RunConfig(name="ray_train", storage_path=str(run_dir),
                             failure_config=FailureConfig(max_failures=conf.max_failures)))


def _resources(conf: RayTrainConfig) -> dict:
    res = {"CPU": conf.cpus_per_worker}
    if conf.gpus_per_worker:
        res["GPU"] = conf.gpus_per_worker
    return res
