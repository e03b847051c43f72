"""The sharded Zarr v3 feature store: one writer per shard, success marker last, read-only reader.

Layout under ``<out>/<dataset>/``::

    store.json                       dataset, config hash and hashed config (written at creation)
    <split>/<shard_id>.zarr/         one Zarr v3 group per output shard
        <key>                        one array per feature key, [n_videos_ok, *per_video_shape],
                                     one chunk per video, all chunks in one Zarr shard file
        frame_indices, timestamps    [n_videos_ok, F]
        raw/<video_id>/<map>         optional raw derived maps (depth, flow, normal) at source size
        _SUCCESS.json                the marker, written LAST, inside the group, before the rename
    failures.jsonl                   every failed video or missing modality, rebuilt from markers
    report.json                      the run report (see pipeline.report)

A shard is written into a hidden temporary directory, its marker is written last, and the
directory is renamed into place; a shard is valid only if its marker parses, carries the
store's config hash and the expected video ids, and every array it lists exists with the listed
shape. A kill -9 at any moment therefore leaves only temporary directories behind, which the
next run deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

STORE_FORMAT = "crema-store/1"
MARKER = "_SUCCESS.json"
STORE_META = "store.json"
FAILURES = "failures.jsonl"
TMP_PREFIX = ".tmp-"
FEATURE_KEYS = ("rgb", "depth", "flow", "normal", "audio", "pointcloud", "pointcloud_xyz")
RAW_MAPS = ("depth", "flow", "normal")


class StoreError(RuntimeError):
    """A store that cannot be used as asked (missing, foreign, or written by another config)."""


class StoreMismatchError(StoreError):
    """The store was written with a different feature config than the caller expects."""


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _array_digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:32]


@dataclass(frozen=True)
class ShardSpec:
    """A manifest shard: which videos one writer task owns."""

    shard_id: str
    split: str
    video_ids: tuple[str, ...]

    def relpath(self) -> str:
        return f"{self.split}/{self.shard_id}.zarr"


# --------------------------------------------------------------------------- store level


def init_store(root: Path, *, dataset: str, config_hash: str, features: dict, overwrite: bool = False) -> None:
    """Create ``root`` or check that it was made with the same feature config.

    A store made with another config is refused (its shards would mix incompatible features);
    ``overwrite=True`` deletes it first.
    """
    root = Path(root)
    meta_path = root / STORE_META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("config_hash") == config_hash:
            return
        if not overwrite:
            raise StoreMismatchError(
                f"{root} holds features made with config {meta.get('config_hash')}, but this run's "
                f"feature config hashes to {config_hash}. Write to another OUT, or pass "
                f"store.overwrite=true to delete the old store first."
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(
        meta_path,
        {"format": STORE_FORMAT, "dataset": dataset, "config_hash": config_hash, "features": features,
         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )


def remove_stale_temporaries(root: Path) -> int:
    """Delete what interrupted writers left behind; returns how many entries were removed."""
    removed = 0
    for tmp in Path(root).glob(f"*/{TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed += 1
    for tmp in Path(root).glob(f"{TMP_PREFIX}*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


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


# --------------------------------------------------------------------------- writing


def _stack_key(videos: list[dict], key: str) -> tuple[np.ndarray | None, list[bool]]:
    """Stack one feature key over the shard's ok videos; missing entries are zero-filled."""
    present = [key in v.get("features", {}) for v in videos]
    first = next((v["features"][key] for v, p in zip(videos, present) if p), None)
    if first is None:
        return None, present
    out = np.zeros((len(videos), *first.shape), dtype=first.dtype)
    for i, (v, p) in enumerate(zip(videos, present)):
        if p:
            arr = v["features"][key]
            if arr.shape != first.shape or arr.dtype != first.dtype:
                raise ValueError(
                    f"video {v['video_id']}: feature {key!r} has shape {arr.shape} {arr.dtype}, expected "
                    f"{first.shape} {first.dtype} like the rest of its shard"
                )
            out[i] = arr
    return out, present


def _create(group: zarr.Group, name: str, data: np.ndarray, compression: str) -> None:
    chunks = (1, *data.shape[1:]) if data.ndim else ()
    compressors = None if compression == "none" else "auto"
    group.create_array(
        name, data=data, chunks=chunks if data.shape[0] else "auto",
        shards=data.shape if data.shape[0] and data.ndim else None, compressors=compressors,
    )


def write_shard(
    root: Path,
    spec: ShardSpec,
    videos: list[dict],
    *,
    config_hash: str,
    compression: str = "auto",
    store_raw_maps: bool = False,
    timings: dict | None = None,
) -> dict:
    """Write one shard (the only writer of ``spec``) and return its marker.

    ``videos`` are payload video dicts (pipeline.schema) in manifest order. Failed videos are
    listed in the marker and get no record; modality errors are listed and masked.
    """
    root = Path(root)
    if [v["video_id"] for v in videos] != list(spec.video_ids):
        raise ValueError(f"shard {spec.shard_id}: payload videos do not match the manifest")
    final = root / spec.relpath()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}"
    ok = [v for v in videos if not v.get("failed")]
    failed = [{"video_id": v["video_id"], **v["failed"]} for v in videos if v.get("failed")]
    errors = [{"video_id": v["video_id"], **e} for v in ok for e in v.get("errors", [])]

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    arrays: dict[str, dict] = {}
    present: dict[str, list[bool]] = {}

    def put(name: str, data: np.ndarray) -> None:
        _create(group, name, data, compression)
        arrays[name] = {"shape": list(data.shape), "dtype": str(data.dtype), "sha256": _array_digest(data)}

    if ok:
        for key in FEATURE_KEYS:
            data, mask = _stack_key(ok, key)
            if data is not None:
                put(key, data)
                present[key] = mask
        put("frame_indices", np.stack([np.asarray(v["frame_indices"], np.int64) for v in ok]))
        put("timestamps", np.stack([np.asarray(v["timestamps"], np.float64) for v in ok]))
        if store_raw_maps:
            for v in ok:
                for name, m in v.get("maps", {}).items():
                    put(f"raw/{v['video_id']}/{name}", np.asarray(m, np.float16)[None])
    per_video = {
        v["video_id"]: {
            "fps": float(v.get("fps", 0.0)), "num_frames": int(v.get("num_frames", 0)),
            "decoder": v.get("decoder"), "size": list(np.asarray(v["frames"]).shape[1:3]) if "frames" in v else None,
            "errors": v.get("errors", []), "model_meta": v.get("model_meta", {}),
        }
        for v in ok
    }
    group.attrs.update({"shard_id": spec.shard_id, "split": spec.split, "config_hash": config_hash,
                        "ok": [v["video_id"] for v in ok], "present": present, "videos": per_video})
    marker = {
        "shard_id": spec.shard_id, "split": spec.split, "config_hash": config_hash,
        "video_ids": list(spec.video_ids), "ok": [v["video_id"] for v in ok], "failed": failed,
        "errors": errors, "present": present, "arrays": arrays, "timings": timings or {},
        "written_at": time.time(),
    }
    _write_json_atomic(tmp / MARKER, marker)
    if final.exists():  # an invalid leftover (the caller only rewrites shards that fail validation)
        shutil.rmtree(final)
    os.rename(tmp, final)
    return marker


def collect_markers(root: Path, *, config_hash: str) -> dict[str, dict]:
    """Markers of every valid shard under ``root``, keyed by relative shard path."""
    out = {}
    for shard_dir in sorted(Path(root).glob("*/*.zarr")):
        if shard_is_valid(shard_dir, config_hash=config_hash):
            out[f"{shard_dir.parent.name}/{shard_dir.name}"] = read_marker(shard_dir)
    return out


def write_failures(root: Path, markers: Iterable[dict], extra: Iterable[dict] = ()) -> list[dict]:
    """Rebuild failures.jsonl from the shard markers (plus run-level failures); returns rows."""
    rows = []
    for m in markers:
        rows += [{**f, "shard_id": m["shard_id"], "fatal": True} for f in m["failed"]]
        rows += [{**e, "shard_id": m["shard_id"], "fatal": False} for e in m["errors"]]
    rows += list(extra)
    rows.sort(key=lambda r: (r.get("video_id", ""), r.get("stage", "")))
    tmp = Path(root) / f"{TMP_PREFIX}{FAILURES}"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, Path(root) / FAILURES)
    return rows


# --------------------------------------------------------------------------- reading


class FeatureStore:
    """Read-only view of a store: only shards with a valid marker are visible.

    >>> fs = FeatureStore("outputs/features/demo", expected_config_hash=config_hash(cfg.features))
    >>> fs.get("demo_0003", "rgb").shape      # (F_stored, tokens, dim) float16
    """

    def __init__(self, root: str | Path, expected_config_hash: str | None = None):
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
        for rel, marker in collect_markers(self.root, config_hash=self.config_hash).items():
            shard_dir = self.root / rel
            for row, vid in enumerate(marker["ok"]):
                self._index[vid] = (shard_dir, row)
                self._present[vid] = {k: mask[row] for k, mask in marker["present"].items()}
            for key, info in marker["arrays"].items():
                if key in FEATURE_KEYS:
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
