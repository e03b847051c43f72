"""`weights=random`: every model of a preset built at its real size with seeded random weights.

One switch for the extract and train apps (conf/weights/random.yaml). It changes the composed
config before anything is built, so the rest of the code runs unchanged:

* each stage with a learned model gets `random_init` (its full-size architecture from
  `weights.architectures`, keyed by what names the model) and `weights: random`. Both are in the
  features hash, so a random-weight store never takes real features (or the reverse), and the
  store's meta records `weights: random` per stage;
* the trainer's frozen BLIP-2 / Flan-T5 are random-init from the model config's own sizes
  (`model.pretrained=false`; the tokenizer is ByT5's, which needs no download), and `check_store_weights` refuses a store whose features were made
  with the other kind of weights, naming it (the hash check alone would only say "another config").

What it is for: dry runs, benchmarks and planning (speed and memory do not depend on the weights'
values). The features and any model trained on them mean nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from core.util import to_plain

RANDOM = "random"


def mode(cfg: Any) -> str:
    """`pretrained` or `random` (an app config without a `weights` node is pretrained)."""
    node = cfg.get("weights") if cfg is not None else None
    return str(node.get("mode", "pretrained")) if node else "pretrained"


def architecture_key(stage: dict) -> str | None:
    """What names a stage's model in `weights.architectures`; None for a stage without one."""
    if stage.get("backend") == "ptlflow":
        return f"ptlflow:{stage['ptlflow']['model']}"
    if stage.get("backend") == "raft":
        return f"raft:{stage['raft']['arch']}"
    if stage.get("checkpoint_file"):
        return f"beats:{stage['checkpoint_file']}"
    return stage.get("model_id") or None


def _randomise_stage(name: str, stage: DictConfig, architectures: dict, seed: int) -> None:
    plain = to_plain(stage)
    if plain.get("random_init"):  # a tiny preset's stage: random already, at its own size
        return
    key = architecture_key(plain)
    if key is None:  # no learned model (geometric normals, OpenCV flow, point clouds)
        return
    if key not in architectures:
        raise ValueError(f"weights=random has no full-size architecture for features.extractors.{name} ({key!r}): "
                         f"add it under `architectures` in conf/weights/random.yaml, or pick another model")
    with open_dict(stage):
        stage.random_init = architectures[key]
        stage.seed = seed
        stage.weights = RANDOM


def apply(cfg: DictConfig) -> DictConfig:
    """Rewrite an app config in place for its `weights` mode (nothing to do for pretrained)."""
    if mode(cfg) != RANDOM:
        return cfg
    architectures = to_plain(cfg.weights.architectures)
    seed = int(cfg.weights.get("seed", 0))
    for name, stage in cfg.features.extractors.items():
        _randomise_stage(str(name), stage, architectures, seed)
    if "model" in cfg and cfg.model.get("pretrained"):
        with open_dict(cfg.model):
            cfg.model.pretrained = False
            cfg.model.seed = seed
            if cfg.model.get("tokenizer") == "pretrained":  # the T5 checkpoint's: a download
                cfg.model.tokenizer = "byt5"
    return cfg


def random_stages(view: dict) -> list[str]:
    """The stages of a (hashed) features view that were built with weights=random."""
    return sorted(n for n, s in (view.get("extractors") or {}).items() if isinstance(s, dict) and s.get("weights") == RANDOM)


def check_store_weights(store: str | Path, cfg: DictConfig, modalities) -> None:
    """Refuse a store whose features for `modalities` were made with the other kind of weights."""
    from core.store import StoreError, read_store_meta

    try:
        meta = read_store_meta(Path(store))
    except Exception:  # a missing or broken store: the store's own reader says why, later
        return
    ours = mode(cfg)
    for m in modalities:
        recorded = (meta.get("modalities") or {}).get(m, {}).get("features") or {}
        theirs = random_stages(recorded)
        if theirs and ours != RANDOM:
            raise StoreError(f"store {store} holds {m!r} features made with weights=random (stages {theirs}: "
                             "random full-size models, for dry runs only); they cannot train a real model. "
                             "Train with weights=random for a dry run, or extract with the real weights into another OUT")
        if recorded and not theirs and ours == RANDOM and _has_models(recorded):
            raise StoreError(f"store {store} holds {m!r} features made with real weights; weights=random "
                             "would mix random-weight models with them. Point store= at a weights=random "
                             "store, or train without weights=random")


def _has_models(view: dict) -> bool:
    return any(isinstance(s, dict) and architecture_key(s) and not s.get("random_init")
               for s in (view.get("extractors") or {}).values())

