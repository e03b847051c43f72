# make import-ckpt SRC=crema_initial.pth DATASET=nextqa
#   == python scripts/import_ckpt.py src=crema_initial.pth dataset=nextqa features=full
"""Convert CREMA's released checkpoints into this project's format, and back (Hydra app over
conf/import_ckpt.yaml; the work is trainer/released.py)."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from model.reference_ckpt import ConversionError
from trainer.checkpoint import CheckpointError
from trainer.released import run

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(version_base="1.3", config_path="../conf", config_name="import_ckpt")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        run(cfg)
    except (ConversionError, CheckpointError) as exc:  # user-fixable: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
