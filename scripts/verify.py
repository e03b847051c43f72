# make verify DATASET=demo [OUT=outputs/features]   (== python scripts/verify.py dataset=demo out=outputs/features)
"""Check every finished shard of a store against its marker's checksums (Hydra app over
conf/verify.yaml). Exit 0: all shards verify; 1: corrupt shards, listed; 2: no store there."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from core.store import MARKER, STORE_META, verify_shard


@hydra.main(version_base="1.3", config_path="../conf", config_name="verify")
def main(cfg: DictConfig) -> None:
    root = Path(cfg.store)
    if not (root / STORE_META).is_file():
        print(f"error: no feature store at {root} ({STORE_META} missing); run `make extract` first or set OUT=",
              file=sys.stderr)
        sys.exit(2)
    shards = sorted(p.parent for p in root.glob(f"*/*.zarr/{MARKER}"))
    corrupt = {}
    for shard in tqdm(shards, desc=f"verify {root.name}", unit="shard"):
        problems = verify_shard(shard)
        if problems:
            corrupt[shard] = problems
    for shard, problems in corrupt.items():
        print(f"CORRUPT {shard.relative_to(root)}: " + "; ".join(problems))
    print(f"{len(shards) - len(corrupt)}/{len(shards)} shards verify in {root}"
          + (f"; {len(corrupt)} corrupt: `make extract ... ARGS=\"store.verify=true\"` extracts them again"
             if corrupt else ""))
    sys.exit(1 if corrupt else 0)


if __name__ == "__main__":
    main()
