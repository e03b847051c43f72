# make submit-train DATASET=demo RAY_ADDRESS=http://<head>:8265 OUT=/shared/features RUN_DIR=/shared/runs/demo
#   == (in the Ray job) python scripts/train_ray.py dataset=demo out=/shared/features run_dir=/shared/runs/demo
"""Train on the Ray cluster this runs on: scripts/train.py's training in Ray Train workers
(Hydra app over conf/train_ray.yaml; trainer/ray_launch.py)."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from core.hub import ModelUnavailableError
from core.store import StoreError
from trainer.checkpoint import CheckpointError
from trainer.ray_launch import WorkerError, launch
from trainer.shared_storage import SharedStorageError

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_ray")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        launch(cfg)
    except (WorkerError, SharedStorageError, StoreError, ModelUnavailableError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    print(f"run folder: {cfg.run_dir} (metrics.jsonl, curves.png, report.md, checkpoints/)")


if __name__ == "__main__":
    main()
