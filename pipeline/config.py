"""Config helpers shared by the extract and train apps: the feature config hash and containers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Keys whose values never change what is computed (actor counts, CPUs/GPUs, batch sizes,
# device placement). Everything else in the `features` node is part of the hash.
RUNTIME_KEYS = frozenset({"resources"})


def to_plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of an OmegaConf node (dicts and lists pass through)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _strip_runtime(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_runtime(v) for k, v in sorted(node.items()) if k not in RUNTIME_KEYS}
    if isinstance(node, list):
        return [_strip_runtime(v) for v in node]
    return node


def hashed_view(features_cfg: Any) -> dict:
    """The part of the `features` config that the hash covers (runtime-only keys removed)."""
    return _strip_runtime(to_plain(features_cfg))


def config_hash(features_cfg: Any) -> str:
    """A short, stable hash of what determines the stored features.

    Both apps compose the same `features` node (conf/features/*.yaml); the extractor stamps the
    hash into the store and the trainer refuses a store stamped with another one.
    """
    blob = json.dumps(hashed_view(features_cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
