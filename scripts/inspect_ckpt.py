# make inspect CKPT=outputs/train/demo [ARGS="model.modalities=[rgb]"]
#   == python scripts/inspect_ckpt.py ckpt=outputs/train/demo model.modalities=[rgb]
"""What a checkpoint holds and whether it matches a config (Hydra app over conf/inspect.yaml; the
work is trainer/inspection.py). A table, then one JSON line. Exit 0: checksums verified (and the
config matches, when one was given); 4: mismatches, named; 2: no checkpoint there or a bad
option; 3: a corrupt checkpoint (the file named): trainer/checkpoint.py's codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from core import random_weights
from core.store import StoreError
from trainer import checkpoint
from trainer.inspection import find, holdings, mismatches, report


def _given(cfg: DictConfig) -> tuple[bool, Path | None]:
    """(compare with the config?, the store to compare with): from what the command line set."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    compare = cfg.compare if cfg.compare is not None else any(k not in ("ckpt", "compare") for k in keys)
    store = Path(cfg.store) if compare and {"store", "out"} & set(keys) else None
    return bool(compare), store


@hydra.main(version_base="1.3", config_path="../conf", config_name="inspect")
def main(cfg: DictConfig) -> None:
    try:
        directory = find(cfg.ckpt)
        view = holdings(directory)
        compare, store = _given(cfg)
        found = None
        if compare:
            random_weights.apply(cfg)  # weights=random builds another backbone: compare with that one
            found = mismatches(checkpoint.read_state(directory), cfg, store=store)
    except (checkpoint.CheckpointError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    overrides = " ".join(o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt="))
    print("\n".join(report(view, found, overrides or "the default config")))
    print(json.dumps({**view, "mismatches": found}))
    if found:
        print(f"error: {directory} does not match the config ({overrides}): {len(found)} mismatches, named above",
              file=sys.stderr)
        sys.exit(checkpoint.RunMismatch.exit_code)


if __name__ == "__main__":
    main()
