# make plan DATASET=demo   (or: python scripts/plan.py dataset=nextqa features=full plan.gpus=8 plan.cpus=96)
"""Predict a dataset's extraction (wall, GPU hours, bottleneck stage, store bytes) from a measured
sample (pipeline/plan.py); writes plan.json beside the store. Its last line is one JSON object."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from core import random_weights
from pipeline.errors import EXIT_USER
from pipeline.extract import ExtractError
from pipeline.plan import last_line, run_plan, table


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        random_weights.apply(cfg)
        result = run_plan(cfg)
    except (ExtractError, ValueError, FileNotFoundError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        sys.exit(EXIT_USER)
    print(table(result), flush=True)
    print(last_line(result), flush=True)


if __name__ == "__main__":
    main()
