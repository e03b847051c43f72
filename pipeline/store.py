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
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from core.modalities import MODALITIES, STORE_KEYS

FRAME_KEYS = frozenset(k for row in MODALITIES.values() if row.kind == "frame" for k in row.store_keys)
from core.features import combined_hash
from core.store import (FAILURES, LOCK, MARKER, STORE_FORMAT, STORE_META, ShardSpec, StoreMismatchError, array_digest,
                        raw_dir, read_marker, read_store_meta, registry)
from core.util import TMP_PREFIX, write_json_atomic, write_text_atomic
from pipeline.lease import FENCE


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


def init_store(root: Path, *, dataset: str, hashes: dict[str, str], features: dict[str, dict] | None = None,
               overwrite: bool = False) -> dict[str, str]:
    """Create ``root`` or check it against this run's per-modality config hashes; returns the
    registry ({modality: hash}) after this run's modalities joined it.

    A modality the store holds with another hash is refused (its shards would mix incompatible
    features) unless ``overwrite=True``, which deletes the whole store first. A modality the
    store does not hold yet joins the registry (its features are then added shard by shard).
    """
    root = Path(root)
    meta_path = root / STORE_META
    features = features or {}
    if meta_path.exists():
        try:
            meta = read_store_meta(root)
            have = registry(meta)
            clash = {m: (have[m], h) for m, h in hashes.items() if m in have and have[m] != h}
        except StoreMismatchError:
            if not overwrite:
                raise
            meta, clash = None, {"format": ("old", STORE_FORMAT)}
        if clash and not overwrite:
            detail = ", ".join(f"{m}: store {a}, this run {b}" for m, (a, b) in clash.items())
            raise StoreMismatchError(
                f"{root} holds features made with another config ({detail}). Write to another OUT, or pass "
                f"store.overwrite=true to delete the old store first."
            )
        if clash:  # store.overwrite: everything goes but the lease this run holds
            for child in root.iterdir():
                if child.name not in (LOCK, FENCE):  # the lease and its fence stay with the run holding them
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            new = {m: h for m, h in hashes.items() if m not in have}
            if new:
                meta["modalities"].update({m: {"hash": h, "features": features.get(m, {})} for m, h in new.items()})
                meta["config_hash"] = combined_hash(registry(meta))
                write_json_atomic(meta_path, meta)
            return registry(meta)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        meta_path,
        {"format": STORE_FORMAT, "dataset": dataset, "config_hash": combined_hash(hashes),
         "modalities": {m: {"hash": h, "features": features.get(m, {})} for m, h in hashes.items()},
         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )
    return dict(hashes)


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


def _create(group: zarr.Group, name: str, data: np.ndarray, compression: str, *, per_frame: bool = False) -> None:
    """One array, all of it in one Zarr shard file; inner chunks of one video, or of one frame of
    one video for frame modalities (`per_frame`: the trainer reads the T frames it samples, not all F)."""
    chunks = ((1, 1, *data.shape[2:]) if per_frame and data.ndim >= 3 else (1, *data.shape[1:])) if data.ndim else ()
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
    hashes: dict[str, str],
    compression: str = "auto",
    store_raw_maps: bool = False,
    timings: dict | None = None,
    nodes: dict | None = None,
    hops: dict | None = None,
    fence=None,
    tmp_token: str | None = None,
) -> dict:
    """Write one shard (the only writer of ``spec``) and return its marker.

    ``videos`` are payload video dicts (core.schema) in manifest order. Failed videos are
    listed in the marker and get no record; modality errors are listed and masked. ``hashes``:
    the config hash of every modality the shard holds. Replacing a valid shard never leaves a
    moment without one on disk (see ``_swap_into_place``). ``nodes``
    (stage -> the Ray node it ran on) goes into the marker only, like ``timings``: the arrays and
    the group's attrs do not depend on where a shard ran; ``hops`` (stage -> array bytes it
    handed on) likewise. ``fence`` (a context-manager factory, pipeline.lease.fenced): the swap
    into place happens inside it, so a writer whose run lost the store's lease changes nothing;
    ``tmp_token`` names the temporary (``shard_tmp``) so the caller can remove it after a failure.
    """
    root = Path(root)
    if [v["video_id"] for v in videos] != list(spec.video_ids):
        raise ValueError(f"shard {spec.shard_id}: payload videos do not match the manifest")
    final = root / spec.relpath()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = shard_tmp(root, spec, tmp_token or uuid.uuid4().hex[:8])
    ok = [v for v in videos if not v.get("failed")]
    failed = [{"video_id": v["video_id"], **v["failed"]} for v in videos if v.get("failed")]
    errors = [{"video_id": v["video_id"], **e} for v in ok for e in v.get("errors", [])]

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    arrays: dict[str, dict] = {}
    present: dict[str, list[bool]] = {}

    def put(name: str, data: np.ndarray) -> None:
        _create(group, name, data, compression, per_frame=name in FRAME_KEYS)
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
                    put(f"raw/{raw_dir(v['video_id'])}/{name}", np.asarray(m, np.float16)[None])
    per_video = {
        v["video_id"]: {
            "fps": float(v.get("fps", 0.0)), "num_frames": int(v.get("num_frames", 0)),
            "decoder": v.get("decoder"),
            "size": list(np.asarray(v["frames"]).shape[1:3]) if "frames" in v else v.get("size"),
            "errors": v.get("errors", []), "model_meta": v.get("model_meta", {}),
        }
        for v in ok
    }
    group.attrs.update({"shard_id": spec.shard_id, "split": spec.split, "hashes": dict(sorted(hashes.items())),
                        "ok": [v["video_id"] for v in ok], "present": present, "videos": per_video})
    marker = {
        "shard_id": spec.shard_id, "split": spec.split, "hashes": dict(sorted(hashes.items())),
        "config_hash": combined_hash(hashes), "video_ids": list(spec.video_ids), "ok": [v["video_id"] for v in ok], "failed": failed,
        "errors": errors, "present": present, "arrays": arrays, "timings": timings or {},
        "nodes": nodes or {}, "hops": hops or {}, "written_at": time.time(),
    }
    _fsync_tree(tmp)  # the data is on disk before the marker that vouches for it
    write_json_atomic(tmp / MARKER, marker)
    try:
        with fence() if fence is not None else nullcontext():
            _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a swap; a fenced-out writer leaves nothing
    return marker


def shard_tmp(root: Path, spec: ShardSpec, token: str) -> Path:
    """The temporary directory a writer fills before renaming it to ``spec``'s shard."""
    final = Path(root) / spec.relpath()
    return final.parent / f"{TMP_PREFIX}{final.name}.{token}"


REPLACED = ".replaced-"


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``. An existing ``final`` (a shard being extended or repaired)
    is first renamed aside, never deleted before the new one is in place: a crash in between
    leaves ``<final>.replaced-<id>``, which ``recover_replaced`` renames back."""
    aside = None
    if final.exists():
        aside = final.with_name(f"{final.name}{REPLACED}{uuid.uuid4().hex[:8]}")
        final.rename(aside)
    tmp.rename(final)
    _fsync(final.parent)  # the renames themselves
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def recover_replaced(root: Path) -> int:
    """Shards renamed aside by a writer that died before its replacement was in place go back;
    an aside copy whose replacement made it is deleted. Returns how many were restored."""
    restored = 0
    for aside in sorted(Path(root).glob(f"*/*.zarr{REPLACED}*")):
        final = aside.with_name(aside.name.split(REPLACED)[0])
        if final.exists() and (final / MARKER).exists():
            shutil.rmtree(aside, ignore_errors=True)
            continue
        if final.exists():
            shutil.rmtree(final)
        aside.rename(final)
        restored += 1
    return restored


def load_base(base_dir: Path, videos: list[dict], *, pass_keys: set[str], pass_stages: set[str]) -> dict[str, str]:
    """Fill payload videos with what an existing shard already holds; returns that shard's hashes.

    A video marked ``carry`` is taken over whole (status, features, metadata) and was not
    extracted in this pass. Any other video keeps the shard's keys that this pass does not
    compute (adding a modality) and the shard's errors of stages that did not run; if this pass
    failed on a video the shard holds, the video keeps everything and the failure becomes an
    error of this pass's modalities (finished work is never dropped).
    """
    marker = read_marker(base_dir)
    group = zarr.open_group(str(base_dir), mode="r")
    rows = {vid: i for i, vid in enumerate(marker["ok"])}
    failed = {f["video_id"]: {k: x for k, x in f.items() if k != "video_id"} for f in marker["failed"]}
    info_by_video = group.attrs["videos"]
    for v in videos:
        vid = v["video_id"]
        carry = bool(v.get("carry"))
        if vid not in rows:
            if carry:
                v["failed"] = failed.get(vid) or {"stage": "extract", "reason": "not in the shard it was carried from"}
            continue
        row, info = rows[vid], info_by_video[vid]

        def take_decode_fields() -> None:  # what decoding gave this video, as the shard holds it
            v.update(fps=info.get("fps", 0.0), num_frames=info.get("num_frames", 0), decoder=info.get("decoder"),
                     size=info.get("size"), frame_indices=np.asarray(group["frame_indices"][row]),
                     timestamps=np.asarray(group["timestamps"][row]))

        if carry:
            keys = set(STORE_KEYS)
            take_decode_fields()
            v.update(failed=None, errors=list(info.get("errors", [])), model_meta=dict(info.get("model_meta", {})))
        else:
            keys = set(STORE_KEYS) - pass_keys
            if v.get("failed"):  # this pass could not redo it: keep the shard's row, list the failure
                v["errors"] = v.get("errors", []) + [{**v["failed"], "reason": f"{v['failed']['reason']} (adding "
                                                       f"{', '.join(sorted(pass_keys))}; the rest kept)"}]
                v["failed"] = None
                keys = set(STORE_KEYS)
                take_decode_fields()
            kept = [e for e in info.get("errors", []) if e.get("stage") not in pass_stages]
            v["errors"] = kept + v.get("errors", [])
            v["model_meta"] = {**info.get("model_meta", {}), **v.get("model_meta", {})}
        for key in sorted(keys):
            if key in marker["arrays"] and marker["present"].get(key, [False] * len(rows))[row]:
                v["features"][key] = np.asarray(group[key][row])
    return dict(marker.get("hashes", {}))


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


