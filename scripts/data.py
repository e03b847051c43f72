# make data DATASET=nextqa DATA=/path/to/nextqa   (== python scripts/data.py dataset=nextqa dataset.root=/path/to/nextqa)
"""Check a dataset folder without extracting (Hydra app over conf/data.yaml): per split, questions,
videos, media found/missing, question types; the last line is one JSON object. Exit 2 with one
`error: ...` line when an annotation file does not parse. Starts no Ray and decodes nothing."""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from core.data_check import check_index, describe, summary
from core.datasets import load_dataset


@hydra.main(version_base="1.3", config_path="../conf", config_name="data")
def main(cfg: DictConfig) -> None:
    try:
        index = load_dataset(cfg.dataset)
    except (FileNotFoundError, ValueError) as exc:  # AnnotationError is a ValueError
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(2)
    report = check_index(index)
    print("\n".join(describe(index.name, report)))
    print(json.dumps(summary(index.name, report)))


if __name__ == "__main__":
    main()
