# make weights DATASET=nextqa [FEATURES=full] [CHECK=1]   (== python scripts/weights.py dataset=nextqa features=full)
"""Download (or with check=true only look up) every model that extraction and training need for
a dataset and features preset (Hydra app over conf/weights.yaml). Exit 0: all present; 2: some
are missing (check=true), listed with their download commands; 3: a download failed."""

from __future__ import annotations

import dataclasses
import sys

import hydra
from omegaconf import DictConfig

from core.features import resolve_features
from core.weights import Weights, download, make_hint, missing_message
from extractors.weights import features_weights
from model.weights import crema_weights


def needed(cfg: DictConfig) -> list[Weights]:
    """The extraction stages' models, then the trainer's, each once (naming all its users)."""
    unique: dict[tuple, Weights] = {}
    for w in features_weights(resolve_features(cfg.features)) + crema_weights(cfg.model):
        key = (w.name, w.revision, w.target)
        unique[key] = dataclasses.replace(unique[key], user=f"{unique[key].user}, {w.user}") if key in unique else w
    return list(unique.values())


def fetch(missing: list[Weights]) -> list[str]:
    """Download each missing model; the names of those that failed, with why."""
    failed = []
    for w in missing:
        print(f"downloading {w.name} ({w.user}) ...", flush=True)
        try:
            download(w)
        except Exception as exc:  # offline, gated, HTTP error: say which, go on with the others
            failed.append(f"{w.name}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
    return failed


@hydra.main(version_base="1.3", config_path="../conf", config_name="weights")
def main(cfg: DictConfig) -> None:
    try:
        weights = needed(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    missing = [w for w in weights if not w.present]
    if not missing:
        print(f"all {len(weights)} model(s) this preset loads are present (random-init presets load none)"
              + "".join(f"\n  {w.name} ({w.user})" for w in weights))
        return
    if cfg.check:
        print(f"error: {missing_message(missing, make_hint=make_hint())}",
              file=sys.stderr)
        sys.exit(2)
    failed = fetch(missing)
    if failed:
        print("error: these downloads failed (network? the commands of `make weights CHECK=1` run by hand "
              "on a machine with network):\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(3)
    print(f"downloaded {len(missing)} model(s); all {len(weights)} present")


if __name__ == "__main__":
    main()
