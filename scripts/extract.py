# make extract DATASET=demo          (or: python scripts/extract.py dataset=nextqa features=full out=/data/feats)
"""Extract cached multimodal features for a dataset into the sharded Zarr store (Hydra app)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from core.store import StoreError
from pipeline.extract import ExtractError, run_extract


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run_extract(cfg)
    except (StoreError, ExtractError, FileNotFoundError, ValueError) as exc:  # user-fixable: say what, not a stack trace
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    total = max(1, report["videos_total"])
    if report["videos_failed"] / total > cfg.max_failed_fraction:
        print(f"error: {report['videos_failed']}/{report['videos_total']} videos failed, more than "
              f"max_failed_fraction={cfg.max_failed_fraction}; see {report['failures']['manifest']}", file=sys.stderr)
        sys.exit(1)
    if report["videos_pending"]:
        print(f"error: {report['videos_pending']} videos were not written; run the same command again to resume",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
