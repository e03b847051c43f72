# make train DATASET=demo ARGS="trainer.epochs=5"
#   == python scripts/train.py dataset=demo trainer.epochs=5
# make train NPROC=2 ...  == python -m torch.distributed.run --nproc_per_node=2 scripts/train.py ...
"""Train CREMA's MMQA modules and fusion on cached features (Hydra app over conf/train.yaml).

`run(cfg)` is the whole training as a function: torchrun's processes reach it through `main`,
and a caller that has formed the process group itself (a Ray Train worker) calls it directly.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from core import random_weights
from core.hub import ModelUnavailableError
from core.store import StoreError
from core.weights import make_hint, preflight
from model.weights import crema_weights
from trainer.checkpoint import CheckpointError
from trainer.config import TrainerConfig

# A deprecation inside peft's transformers checks, once per adapter: noise for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run(cfg: DictConfig) -> None:
    """Train (or continue) the run in cfg.run_dir, then evaluate its best checkpoint on val and test."""
    # a global batch torchrun's ranks cannot divide: refused before the seconds of imports below
    TrainerConfig.from_cfg(cfg.trainer).grad_accum(int(os.environ.get("WORLD_SIZE", "1")))
    random_weights.apply(cfg)  # weights=random: full-size random models; refuses a store of the other kind
    random_weights.check_store_weights(cfg.store, cfg, cfg.model.modalities)
    preflight(crema_weights(cfg.model), make_hint=make_hint())  # all missing models at once, before any work
    from trainer.recipe import Trainer  # after the preflight: its imports alone take seconds

    trainer = Trainer(cfg)
    try:
        state = trainer.train()
        if not state.finished:
            if trainer.is_main:
                print(f"stopped at trainer.max_steps={cfg.trainer.max_steps} (step {state.step}); "
                      f"run the same command with a larger max_steps (or 0) to continue")
            return
        trainer.test()
    finally:
        trainer.close()  # TensorBoard / W&B: flushed however the run ends
    if trainer.is_main:
        print(f"run folder: {cfg.run_dir} (metrics.jsonl, curves.png, report.md, checkpoints/)")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; the other ranks log warnings only
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        run(cfg)
    except (StoreError, ModelUnavailableError, CheckpointError, ValueError) as exc:  # user-fixable
        print(f"error: {'' if rank == 0 else f'[rank {rank}] '}{exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))  # docs/training.md lists the codes
    finally:
        if "trainer.distributed" in sys.modules:  # imported by the trainer, after the preflight
            sys.modules["trainer.distributed"].teardown()


if __name__ == "__main__":
    main()
