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
    blob = json.dumps(hashed_view(resolve_features(features_cfg)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Which extractor stages a requested modality needs, and the order the graph runs them in.
# normal is derived from depth; pointcloud is lifted from depth + the rgb encoder tokens.
STAGE_ORDER = ("depth", "flow", "normal", "encoder", "pointcloud", "audio")
STAGES_FOR = {
    "rgb": ("encoder",),
    "depth": ("depth", "encoder"),
    "flow": ("flow", "encoder"),
    "normal": ("depth", "normal", "encoder"),
    "pointcloud": ("depth", "encoder", "pointcloud"),
    "audio": ("audio",),
}
IMAGE_MODALITIES = ("rgb", "depth", "flow", "normal")


def resolve_features(features_cfg: Any) -> dict:
    """The `features` node reduced to what the requested modalities need, as plain data.

    Extractors no requested modality needs are dropped (so they neither run nor enter the
    hash); the encoder is told which image modalities to encode (rgb always: point clouds lift
    its tokens); every stage learns how many frames are stored.
    """
    feats = to_plain(features_cfg)
    modalities = list(dict.fromkeys(feats["modalities"]))
    unknown = [m for m in modalities if m not in STAGES_FOR]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {sorted(STAGES_FOR)}")
    needed = {s for m in modalities for s in STAGES_FOR[m]}
    missing = sorted(needed - set(feats.get("extractors", {})))
    if missing:
        raise ValueError(f"modalities {modalities} need extractor configs for {missing} under features.extractors")
    decode = dict(feats["decode"])
    decode["audio"] = "audio" in modalities
    extractors = {}
    for name in STAGE_ORDER:
        if name in needed:
            ext = dict(feats["extractors"][name])
            ext["num_frames_stored"] = decode["num_frames_stored"]
            if name == "encoder":
                ext["modalities"] = ["rgb"] + [m for m in IMAGE_MODALITIES[1:] if m in modalities]
            extractors[name] = ext
    return {**feats, "modalities": modalities, "decode": decode, "extractors": extractors}
