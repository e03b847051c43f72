"""The whole training as a function: `make train` (scripts/train.py, also under torchrun) and
Ray Train's workers (trainer/ray_launch.py, after Ray Train formed the process group) call `run`."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from core import random_weights
from core.weights import make_hint, preflight
from model.weights import crema_weights
from trainer.config import TrainerConfig


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
