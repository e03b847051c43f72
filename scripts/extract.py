# make extract DATASET=demo          (or: python scripts/extract.py dataset=nextqa features=full out=/data/feats)
"""Extract cached multimodal features for a dataset into the sharded Zarr store (Hydra app).

Exit codes (pipeline/errors.py): 0 done; 1 too many failed or unwritten videos; 2 a problem with
the request (config, dataset, weights, a busy or mismatched store); 3 the storage refused a write
(disk full, read-only, permission, a name too long). Each non-zero exit ends with one `error:` line.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from core import random_weights
from core.features import resolve_features
from core.store import StoreError
from core.weights import WeightsMissingError, make_hint, preflight
from extractors.weights import features_weights
from pipeline.errors import EXIT_FAILURES, EXIT_STORAGE, EXIT_USER, StorageError
from pipeline.extract import ExtractError, run_extract, stop_ray


def _fail(message: str, code: int) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        random_weights.apply(cfg)  # weights=random: full-size random models (before anything is built)
        # every missing model at once, in seconds, before the store is touched or Ray starts
        preflight(features_weights(resolve_features(cfg.features)), make_hint=make_hint())
        try:
            report = run_extract(cfg)
        finally:
            stop_ray()
    except WeightsMissingError as exc:  # a list of commands: kept on its lines
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER)
    except StorageError as exc:
        _fail(str(exc), EXIT_STORAGE)
    except (StoreError, ExtractError, FileNotFoundError, ValueError) as exc:  # user-fixable: say what, not a stack trace
        _fail(str(exc), EXIT_USER)
    total = max(1, report["videos_total"])
    if report["videos_failed"] / total > cfg.max_failed_fraction:
        _fail(f"{report['videos_failed']}/{report['videos_total']} videos failed, more than "
              f"max_failed_fraction={cfg.max_failed_fraction}; see {report['failures']['manifest']}", EXIT_FAILURES)
    if report["videos_pending"]:
        _fail(f"{report['videos_pending']} videos were not written; run the same command again to resume",
              EXIT_FAILURES)


if __name__ == "__main__":
    main()
