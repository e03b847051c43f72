# make verify DATASET=demo [OUT=outputs/features]   (== python scripts/verify.py dataset=demo out=outputs/features)
"""Check a store against its manifest, its markers and their checksums (Hydra app over
conf/verify.yaml; the checks: pipeline.verify). Exit 0: all is well; 1: problems, listed;
2: no store there. Through `make verify`, make prints the code as `Error N` and itself exits 2
for any of them (use the script, or read that line, to tell 1 from 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from core.store import STORE_META, StoreError
from pipeline.verify import verify_store


@hydra.main(version_base="1.3", config_path="../conf", config_name="verify")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.store)
    if not (root / STORE_META).is_file():
        print(f"error: no feature store at {root} ({STORE_META} missing); run `make extract` first or set OUT=",
              file=sys.stderr)
        sys.exit(2)
    try:
        verdict = verify_store(root, progress=lambda items: tqdm(items, desc=f"verify {root.name}", unit="shard"))
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for note in verdict.notes:
        print(f"note: {note}")
    for rel, problems in verdict.problems.items():
        print(f"CORRUPT {rel}: " + "; ".join(problems))
    bad = len(verdict.problems)
    print(f"{verdict.ok}/{verdict.checked} shards verify in {root}"
          + (f"; {bad} shards with problems: `make extract ... ARGS=\"store.verify=true\"` extracts them again"
             if bad else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
