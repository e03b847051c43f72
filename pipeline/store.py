"""The feature store's write side: one writer per shard, success marker last.

The format and the reader live in core.store (shared with the trainer). A shard is written into
a hidden temporary directory, its marker is written last, and the directory is renamed into
place. A kill -9 at any moment therefore leaves only temporary directories behind, which the
next run deletes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from core.modalities import STORE_KEYS
from core.store import FAILURES, MARKER, STORE_FORMAT, STORE_META, ShardSpec, StoreMismatchError, array_digest
from core.util import TMP_PREFIX, write_json_atomic, write_text_atomic


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and directory under `folder` to disk: a node crash after the rename must
    not leave a marker that vouches for data still in the page cache."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        _fsync(path)


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
    write_json_atomic(
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

    ``videos`` are payload video dicts (core.schema) in manifest order. Failed videos are
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
        arrays[name] = {"shape": list(data.shape), "dtype": str(data.dtype), "sha256": array_digest(data)}

    if ok:
        for key in STORE_KEYS:
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
    _fsync_tree(tmp)  # the data is on disk before the marker that vouches for it
    write_json_atomic(tmp / MARKER, marker)
    if final.exists():  # an invalid leftover (the caller only rewrites shards that fail validation)
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)  # the rename itself
    return marker


def write_failures(root: Path, markers: Iterable[dict], extra: Iterable[dict] = ()) -> list[dict]:
    """Rebuild failures.jsonl from the shard markers (plus run-level failures); returns rows."""
    rows = []
    for m in markers:
        rows += [{**f, "shard_id": m["shard_id"], "fatal": True} for f in m["failed"]]
        rows += [{**e, "shard_id": m["shard_id"], "fatal": False} for e in m["errors"]]
    rows += list(extra)
    rows.sort(key=lambda r: (r.get("video_id", ""), r.get("stage", "")))
    write_text_atomic(Path(root) / FAILURES, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


