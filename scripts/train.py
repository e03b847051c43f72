# make train DATASET=demo ARGS="trainer.epochs=5"
#   == python scripts/train.py dataset=demo trainer.epochs=5
# make train NPROC=2 ...  == python -m torch.distributed.run --nproc_per_node=2 scripts/train.py ...
"""Train CREMA's MMQA modules and fusion on cached features (Hydra app over conf/train.yaml).

`trainer.entry.run(cfg)` is the whole training as a function: torchrun's processes reach it
through `main`; a caller that has formed the process group itself (a Ray Train worker) calls it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from core.hub import ModelUnavailableError
from core.store import StoreError
from trainer.checkpoint import CheckpointError
from trainer.entry import run

# A deprecation inside peft's transformers checks, once per adapter: noise for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


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
