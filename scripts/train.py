# make train DATASET=demo ARGS="trainer.epochs=5"
#   == python scripts/train.py dataset=demo trainer.epochs=5
"""Train CREMA's MMQA modules and fusion on cached features (Hydra app over conf/train.yaml)."""

from __future__ import annotations

import logging
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

# A deprecation inside peft's transformers checks, once per adapter: noise for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        random_weights.apply(cfg)  # weights=random: full-size random models; refuses a store of the other kind
        random_weights.check_store_weights(cfg.store, cfg, cfg.model.modalities)
        preflight(crema_weights(cfg.model), make_hint=make_hint())  # all missing models at once, before any work
        from trainer.recipe import Trainer  # after the preflight: its imports alone take seconds

        trainer = Trainer(cfg)
        try:
            state = trainer.train()
            if not state.finished:
                print(f"stopped at trainer.max_steps={cfg.trainer.max_steps} (step {state.step}); "
                      f"run the same command with a larger max_steps (or 0) to continue")
                return
            trainer.test()
        finally:
            trainer.close()  # TensorBoard / W&B: flushed however the run ends
    except (StoreError, ModelUnavailableError, CheckpointError, ValueError) as exc:  # user-fixable
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))  # docs/training.md lists the codes
    print(f"run folder: {cfg.run_dir} (metrics.jsonl, curves.png, report.md, checkpoints/)")


if __name__ == "__main__":
    main()
