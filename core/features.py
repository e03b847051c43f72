"""The `features` config both apps compose: what the requested modalities need, and its hash.

The extractor stamps one hash per modality into the store; the trainer refuses a store whose
hash differs for a modality it reads.
Which stages run comes from the modality table (core.modalities); the order they run in comes
from each stage's `needs:` and `provides:` (conf/extractor/*.yaml): a stage runs after every
stage that provides something it needs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.modalities import BASE, FRAME, MODALITIES, NAMES
from core.util import to_plain

# Keys whose values never change what is computed (actor counts, CPUs/GPUs, batch sizes,
# device placement, where weights and input files lie on this machine). Everything else in the `features` node is part of the hash.
RUNTIME_KEYS = frozenset({"resources"})


def _strip_runtime(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_runtime(v) for k, v in sorted(node.items()) if k not in RUNTIME_KEYS}
    if isinstance(node, list):
        return [_strip_runtime(v) for v in node]
    return node


def hashed_view(features_cfg: Any) -> dict:
    """The part of the `features` config that the hash covers (runtime-only keys removed)."""
    return _strip_runtime(to_plain(features_cfg))


def _digest(view: Any) -> str:
    blob = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def modality_views(features_cfg: Any, modalities=None) -> dict[str, dict]:
    """Per modality, the hashed part of the config that computes it ALONE: decode, the stages it
    needs, the encoder told about it only. So a modality's features (and hash) do not depend on
    which other modalities were extracted with it, and one can be added to a store later."""
    feats = to_plain(features_cfg)
    names = list(dict.fromkeys(modalities if modalities is not None else feats["modalities"]))
    return {m: hashed_view(resolve_features({**feats, "modalities": [m]})) for m in names}


def modality_hashes(features_cfg: Any, modalities=None) -> dict[str, str]:
    """{modality: hash} of what determines that modality's stored features (see modality_views).

    The store keeps one per modality (store.json), each shard's marker the ones it holds; the
    trainer refuses a store whose hash differs for a modality it reads.
    """
    return {m: _digest(view) for m, view in modality_views(features_cfg, modalities).items()}


def combined_hash(hashes: dict[str, str]) -> str:
    """One short name for a set of per-modality hashes (reports, checkpoints, log lines)."""
    return _digest(sorted(hashes.items()))


def config_hash(features_cfg: Any) -> str:
    """A short, stable hash of what determines the stored features of every requested modality
    (the combination of their per-modality hashes)."""
    return combined_hash(modality_hashes(features_cfg))


def stage_order(extractors: dict) -> list[str]:
    """The stages of `extractors` (name -> config with `needs` / `provides`) in an order where each
    runs after every stage that provides one of its needs; ties keep the config's order.

    A need that no selected stage provides comes from decode (frames, next_frames, audio) or is
    an input the stage checks per video (the encoder encodes only the images present); a cycle
    is an error naming the stages in it.
    """
    provider: dict[str, str] = {}
    for name, ext in extractors.items():
        for key in ext.get("provides") or []:
            if key in provider and provider[key] != name:
                raise ValueError(f"features.extractors: {provider[key]!r} and {name!r} both provide {key!r}")
            provider[key] = name
    after = {name: {provider[k] for k in ext.get("needs") or [] if provider.get(k, name) != name}
             for name, ext in extractors.items()}
    order: list[str] = []
    while len(order) < len(extractors):
        ready = [n for n in extractors if n not in order and after[n] <= set(order)]
        if not ready:
            stuck = sorted(n for n in extractors if n not in order)
            raise ValueError(f"features.extractors: the needs/provides of {stuck} form a cycle")
        order.append(ready[0])
    return order


def resolve_features(features_cfg: Any) -> dict:
    """The `features` node reduced to what the requested modalities need, as plain data.

    Extractors no requested modality needs are dropped (so they neither run nor enter the
    hash); the encoder is told which image modalities to encode (rgb always: point clouds lift
    its tokens); every stage learns how many frames are stored.
    """
    feats = to_plain(features_cfg)
    modalities = list(dict.fromkeys(feats["modalities"]))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {list(NAMES)}")
    needed = {s for m in modalities for s in MODALITIES[m].stages}
    missing = sorted(needed - set(feats.get("extractors", {})))
    if missing:
        raise ValueError(f"modalities {modalities} need extractor configs for {missing} under features.extractors")
    for m in modalities:
        stage = MODALITIES[m].encoder
        if f"features.{m}" not in (feats["extractors"][stage].get("provides") or []):
            raise ValueError(f"modality {m!r} is written by the {stage!r} stage, but "
                             f"features.extractors.{stage}.provides does not list features.{m}")
    decode = dict(feats["decode"])
    decode["audio"] = "audio" in modalities
    streams = [m for m in modalities if MODALITIES[m].stream]
    if streams:  # only then: the hash of every store without sensor streams stays as it was
        decode["streams"] = streams
    selected = {name: ext for name, ext in feats["extractors"].items() if name in needed}
    extractors = {}
    for name in stage_order(selected):
        ext = dict(selected[name])
        ext["num_frames_stored"] = decode["num_frames_stored"]
        if name == "encoder":  # every frame modality asked for; the base always (point clouds lift it)
            ext["modalities"] = [BASE] + [m for m in FRAME if m != BASE and m in modalities]
        extractors[name] = ext
    return {**feats, "modalities": modalities, "decode": decode, "extractors": extractors}
