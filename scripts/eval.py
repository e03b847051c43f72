# make eval DATASET=demo ARGS="eval.combinations=[[rgb],[rgb,flow],[rgb,audio],all]"
#   == python scripts/eval.py dataset=demo eval.combinations=[[rgb],[rgb,flow],[rgb,audio],all]
"""Evaluate a trained CREMA checkpoint on cached features, with any subset of its modalities
(zero-shot composition) and LoRA switched off per modality (Hydra app over conf/eval.yaml)."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from core.hub import ModelUnavailableError
from core.store import StoreError
from core.weights import make_hint, preflight
from model.weights import crema_weights
from trainer import checkpoint
from trainer.checkpoint import CheckpointError

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        # the model comes from the checkpoint: its frozen parts are what must be on this machine
        state = checkpoint.read_state(checkpoint.resolve(cfg.ckpt, "best"))
        preflight(crema_weights(state.get("model_config") or {}, user="eval"), make_hint=make_hint())
        from trainer.evaluate import run_eval  # after the preflight: its imports alone take seconds

        run_eval(cfg)
    except (StoreError, ModelUnavailableError, CheckpointError, ValueError) as exc:  # user-fixable
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))  # docs/training.md lists the codes


if __name__ == "__main__":
    main()
