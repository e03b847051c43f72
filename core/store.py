"""The feature store's format and its read side: what both the writer (pipeline.store) and the
trainer need, and nothing that writes.

Layout under ``<out>/<dataset>/``::

    store.json                       dataset, config hash and hashed config (written at creation)
    <split>/<shard_id>.zarr/         one Zarr v3 group per output shard
        <key>                        one array per store key (core.modalities.STORE_KEYS),
                                     [n_videos_ok, *per_video_shape], one chunk per video, all
                                     chunks in one Zarr shard file
        frame_indices, timestamps    [n_videos_ok, F]
        raw/<video_id>/<map>         optional raw derived maps (depth, flow, normal) at source size
        _SUCCESS.json                the marker, written LAST, inside the group, before the rename
    failures.jsonl                   every failed video or missing modality, rebuilt from markers
    report.json                      the run report (see pipeline.report)

A shard is valid only if its marker parses, carries the store's config hash and the expected
video ids, and every array it lists exists with the listed shape; readers see valid shards only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from core.modalities import STORE_KEYS

STORE_FORMAT = "crema-store/1"
MARKER = "_SUCCESS.json"
STORE_META = "store.json"
FAILURES = "failures.jsonl"


class StoreError(RuntimeError):
    """A store that cannot be used as asked (missing, foreign, or written by another config)."""


class StoreMismatchError(StoreError):
    """The store was written with a different feature config than the caller expects."""


@dataclass(frozen=True)
class ShardSpec:
    """A manifest shard: which videos one writer task owns."""

    shard_id: str
    split: str
    video_ids: tuple[str, ...]

    def relpath(self) -> str:
        return f"{self.split}/{self.shard_id}.zarr"


def read_marker(shard_dir: Path) -> dict | None:
    try:
        return json.loads((Path(shard_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def shard_is_valid(shard_dir: Path, *, config_hash: str, video_ids: Iterable[str] | None = None) -> bool:
    """True when the shard's marker is present, matches, and every listed array is in place."""
    marker = read_marker(shard_dir)
    if marker is None or marker.get("config_hash") != config_hash:
        return False
    if video_ids is not None and list(marker.get("video_ids", [])) != list(video_ids):
        return False
    for key, info in marker.get("arrays", {}).items():
        try:
            meta = json.loads((Path(shard_dir) / key / "zarr.json").read_text())
        except (OSError, ValueError):
            return False
        if list(meta.get("shape", [])) != list(info["shape"]):
            return False
    return True


def array_digest(arr: np.ndarray) -> str:
    """The checksum a marker records for an array (sha256 of its C-order bytes, 32 hex digits)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:32]


def verify_shard(shard_dir: Path) -> list[str]:
    """What is wrong with a shard's data against its marker's checksums ([] when every array
    reads back with the recorded shape, dtype and sha256). Reads the whole shard."""
    marker = read_marker(shard_dir)
    if marker is None:
        return [f"no readable {MARKER}"]
    problems = []
    for key, info in sorted(marker.get("arrays", {}).items()):
        try:
            data = np.asarray(zarr.open_array(str(Path(shard_dir) / key), mode="r")[...])
        except Exception as exc:  # a flipped byte in compressed data usually breaks decoding
            problems.append(f"{key}: unreadable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        if list(data.shape) != list(info["shape"]) or str(data.dtype) != info["dtype"]:
            problems.append(f"{key}: {data.dtype} {list(data.shape)}, the marker says {info['dtype']} {info['shape']}")
        elif "sha256" in info and array_digest(data) != info["sha256"]:
            problems.append(f"{key}: checksum {array_digest(data)} != {info['sha256']} in the marker")
    return problems


def collect_markers(root: Path, *, config_hash: str, verify: bool = False) -> dict[str, dict]:
    """Markers of every valid shard under ``root``, keyed by relative shard path; with `verify`,
    a shard whose data does not match its marker's checksums is left out (read in full)."""
    out = {}
    for shard_dir in sorted(Path(root).glob("*/*.zarr")):
        if shard_is_valid(shard_dir, config_hash=config_hash) and not (verify and verify_shard(shard_dir)):
            out[f"{shard_dir.parent.name}/{shard_dir.name}"] = read_marker(shard_dir)
    return out


class FeatureStore:
    """Read-only view of a store: only shards with a valid marker are visible.

    >>> fs = FeatureStore("outputs/features/demo", expected_config_hash=config_hash(cfg.features))
    >>> fs.get("demo_0003", "rgb").shape      # (F_stored, tokens, dim) float16
    """

    def __init__(self, root: str | Path, expected_config_hash: str | None = None, *, verify: bool = False):
        self.root = Path(root)
        meta_path = self.root / STORE_META
        if not meta_path.exists():
            raise StoreError(
                f"no feature store at {self.root} ({STORE_META} missing). Run the extractor first, e.g. "
                f"`make extract DATASET={self.root.name}`, or point `out=` at the folder that holds it."
            )
        self.info = json.loads(meta_path.read_text())
        self.config_hash = self.info["config_hash"]
        if expected_config_hash is not None and expected_config_hash != self.config_hash:
            raise StoreMismatchError(
                f"store {self.root} was written with feature config {self.config_hash}, but this config "
                f"expects {expected_config_hash}. Use the same `features` preset and overrides as the "
                f"extraction run, or re-extract into another OUT."
            )
        self._index: dict[str, tuple[Path, int]] = {}
        self._present: dict[str, dict[str, bool]] = {}
        self._meta: dict[str, dict] = {}
        self.modalities: dict[str, dict] = {}
        # verify: check every shard's data against its marker's checksums first (reads the store once)
        for rel, marker in collect_markers(self.root, config_hash=self.config_hash, verify=verify).items():
            shard_dir = self.root / rel
            for row, vid in enumerate(marker["ok"]):
                self._index[vid] = (shard_dir, row)
                self._present[vid] = {k: mask[row] for k, mask in marker["present"].items()}
            for key, info in marker["arrays"].items():
                if key in STORE_KEYS:
                    self.modalities.setdefault(key, {"shape": tuple(info["shape"][1:]), "dtype": info["dtype"]})
        self.video_ids = sorted(self._index)
        self._arrays: dict[tuple[Path, str], zarr.Array] = {}
        self._groups: dict[Path, zarr.Group] = {}

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._index

    def _locate(self, video_id: str) -> tuple[Path, int]:
        try:
            return self._index[video_id]
        except KeyError:
            raise KeyError(
                f"video {video_id!r} is not in store {self.root} (failed, not extracted yet, or another "
                f"dataset); see {self.root / FAILURES}"
            ) from None

    def has(self, video_id: str, modality: str) -> bool:
        self._locate(video_id)
        return bool(self._present[video_id].get(modality, False))

    def _array(self, shard_dir: Path, key: str) -> zarr.Array:
        handle = self._arrays.get((shard_dir, key))
        if handle is None:
            handle = zarr.open_array(str(shard_dir / key), mode="r")
            self._arrays[(shard_dir, key)] = handle
        return handle

    def get(self, video_id: str, modality: str) -> np.ndarray:
        """One video's array for ``modality``; KeyError if that modality is missing for it."""
        shard_dir, row = self._locate(video_id)
        if modality not in ("frame_indices", "timestamps") and not self.has(video_id, modality):
            raise KeyError(f"video {video_id!r} has no {modality!r} features (see {self.root / FAILURES})")
        return self._array(shard_dir, modality)[row]

    def read(self, video_id: str, modalities: Iterable[str]) -> dict[str, np.ndarray | None]:
        """Several modalities at once; a missing one comes back as None (the caller's policy decides)."""
        return {m: (self.get(video_id, m) if self.has(video_id, m) else None) for m in modalities}

    def meta(self, video_id: str) -> dict:
        """Per-video metadata: frame indices, timestamps, fps, decoder, errors, model ids."""
        shard_dir, row = self._locate(video_id)
        group = self._groups.get(shard_dir)
        if group is None:
            group = self._groups[shard_dir] = zarr.open_group(str(shard_dir), mode="r")
        info = dict(group.attrs["videos"][video_id])
        info["frame_indices"] = self.get(video_id, "frame_indices")
        info["timestamps"] = self.get(video_id, "timestamps")
        return info

    def raw_map(self, video_id: str, name: str) -> np.ndarray:
        """A raw derived map (depth/flow/normal) if the run stored them (store.raw_maps=true)."""
        shard_dir, _ = self._locate(video_id)
        path = shard_dir / "raw" / video_id / name
        if not path.exists():
            raise KeyError(f"no raw {name!r} map for {video_id!r}; re-extract with store.raw_maps=true")
        return zarr.open_array(str(path), mode="r")[0]
