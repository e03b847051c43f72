"""The feature store's write side: one writer per shard, success marker last.

The format and the reader live in core.store (shared with the trainer). A shard is written into
a hidden temporary directory, its marker is written last, and the directory is renamed into
place. A kill -9 at any moment therefore leaves only temporary directories behind, which the
next run deletes.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from core.modalities import MODALITIES, STORE_KEYS
from core.provenance import sources_changed, video_sources

FRAME_KEYS = frozenset(k for row in MODALITIES.values() if row.kind == "frame" for k in row.store_keys)
from core.features import combined_hash
from core.store import (FAILURES, LOCK, MARKER, STORE_FORMAT, STORE_META, ShardSpec, StoreError, StoreMismatchError,
                        array_digest, raw_dir, read_marker, read_store_meta, read_verified, registry)
from core.util import TMP_PREFIX, fsync_path, write_json_atomic, write_text_atomic
from pipeline.lease import FENCE


def _fsync_tree(folder: Path) -> None:
    """Flush every file and directory under `folder` to disk: a node crash after the rename must
    not leave a marker that vouches for data still in the page cache."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        fsync_path(path)


# --------------------------------------------------------------------------- store level


def holds_shards(root: Path) -> bool:
    """Whether any finished shard (a marker outside this run's temporaries) lies under `root`."""
    return any(TMP_PREFIX not in "/".join(p.relative_to(root).parts[:-1]) for p in Path(root).rglob(MARKER))


def init_store(root: Path, *, dataset: str, hashes: dict[str, str], features: dict[str, dict] | None = None,
               overwrite: bool = False) -> dict[str, str]:
    """Create ``root`` or check it against this run's per-modality config hashes; returns the
    registry ({modality: hash}) after this run's modalities joined it.

    A modality the store holds with another hash is refused (its shards would mix incompatible
    features) unless ``overwrite=True``, which deletes the whole store first. A modality the
    store does not hold yet joins the registry (its features are then added shard by shard).
    A store that holds no finished shard (a run that failed before writing one) holds no features
    to protect: another config replaces it without ``overwrite``.
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
            if not overwrite and holds_shards(root):
                raise
            meta, clash = None, {"format": ("old", STORE_FORMAT)}
        decode = {} if clash else _decode_clash(meta, features)
        clash = clash or decode
        if clash and not overwrite and holds_shards(root):
            detail = ", ".join(f"{m}: store {a}, this run {b}" for m, (a, b) in clash.items())
            why = (" A shard keeps one set of frame indices per video, so every modality must be decoded the same "
                   "way: add it with the store's features.decode settings," if decode else "")
            raise StoreMismatchError(
                f"{root} holds features made with another config ({detail}).{why} Write to another OUT, or pass "
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


# Decode keys that differ per modality by design (whether audio is decoded, which sensor streams):
# every other decode setting decides the frame indices and timestamps, which a shard keeps once per video.
PER_MODALITY_DECODE = frozenset({"audio", "streams"})


def _decode_settings(view: dict) -> dict:
    return {k: v for k, v in (view or {}).get("decode", {}).items() if k not in PER_MODALITY_DECODE}


def _decode_clash(meta: dict | None, features: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """{new modality: (the store's decode settings, this run's)} where a modality the store does not
    hold yet would be decoded differently from those it holds: its features would be computed on
    other frames than the frame indices the shards keep. Empty when all agree (or nothing is known)."""
    if meta is None:
        return {}
    held = {m: _decode_settings(info.get("features")) for m, info in meta.get("modalities", {}).items()}
    held = {m: d for m, d in held.items() if d}  # stores from before the views were recorded: unknown
    if not held:
        return {}
    _, ref = next(iter(sorted(held.items())))
    out = {}
    for m, view in features.items():
        if m in held:
            continue
        mine = _decode_settings(view)
        diff = sorted(k for k in set(ref) | set(mine) if ref.get(k) != mine.get(k))
        if mine and diff:
            out[m] = (f"decode {_show(ref, diff)} (as {', '.join(sorted(held))})", f"decode {_show(mine, diff)}")
    return out


def _show(settings: dict, keys: list[str]) -> str:
    return "{" + ", ".join(f"{k}: {settings.get(k)!r}" for k in keys) + "}"


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


def _codecs(compression: str, checksums: bool) -> list:
    """Each chunk's bytes-to-bytes codecs: zstd (zarr's own default, stated so the crc32c can
    follow it) unless ``compression`` is none, then a crc32c that every read checks."""
    out = [] if compression == "none" else [ZstdCodec(level=0, checksum=False)]
    return out + ([Crc32cCodec()] if checksums else [])


def _create(group: zarr.Group, name: str, data: np.ndarray, compression: str, *, per_frame: bool = False,
            checksums: bool = True) -> None:
    """One array, all of it in one Zarr shard file; inner chunks of one video, or of one frame of
    one video for frame modalities (`per_frame`: the trainer reads the T frames it samples, not all F)."""
    chunks = ((1, 1, *data.shape[2:]) if per_frame and data.ndim >= 3 else (1, *data.shape[1:])) if data.ndim else ()
    group.create_array(
        name, data=data, chunks=chunks if data.shape[0] else "auto",
        shards=data.shape if data.shape[0] and data.ndim else None, compressors=_codecs(compression, checksums),
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
    checksums: bool = True,
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
    handed on) likewise. ``checksums``: a crc32c per chunk, checked on every read (off only
    to measure what it costs: scripts/bench_store.py). ``fence`` (a context-manager factory, pipeline.lease.fenced): the swap
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
        _create(group, name, data, compression, per_frame=name in FRAME_KEYS, checksums=checksums)
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
            "source": v.get("source") or video_sources(v.get("path", ""), v.get("streams")),
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
        "sources": {vid: info["source"] for vid, info in per_video.items()},
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
    fsync_path(final.parent)  # the renames themselves
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


DECODE_KEYS = ("frame_indices", "timestamps")


def _carriable(base_dir: Path, marker: dict) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The base shard's arrays that still match their marker ({key: data}), and what is wrong
    with the others ({key: problem}): only verified bytes are carried into a rewritten shard."""
    good, lost = {}, {}
    for key, info in marker.get("arrays", {}).items():
        if key in STORE_KEYS or key in DECODE_KEYS:
            try:
                good[key] = read_verified(base_dir, key, info)
            except StoreError as exc:
                lost[key] = str(exc)
    return good, lost


def _lost_modalities(lost: dict[str, str], pass_keys: set[str]) -> dict[str, str]:
    """{modality: problem} for modalities whose stored arrays are damaged and that this pass does
    not compute again (they cannot be carried over)."""
    return {m: "; ".join(f"{k}: {lost[k]}" for k in row.store_keys if k in lost)
            for m, row in MODALITIES.items()
            if any(k in lost for k in row.store_keys) and not set(row.store_keys) <= pass_keys}


def _forget_old_source(v: dict, marker: dict, row: int, pass_keys: set[str]) -> None:
    """A video whose source file changed since the shard was written keeps nothing of it: the
    modalities this pass does not compute are listed as missing (stage "store")."""
    if v.get("failed"):
        return
    held = [m for m, r in MODALITIES.items() if not set(r.store_keys) <= pass_keys
            and marker["present"].get(r.store_keys[0], [False] * (row + 1))[row]]
    v["errors"] = v.get("errors", []) + [
        {"stage": "store", "modality": m, "reason": f"the source changed since its {m} features were extracted "
         f"(those were dropped); add them again with features.modalities=[{m}]"} for m in held]


def load_base(base_dir: Path, videos: list[dict], *, pass_keys: set[str], pass_stages: set[str]) -> dict[str, str]:
    """Fill payload videos with what an existing shard already holds; returns the hashes of the
    modalities carried over.

    A video marked ``carry`` is taken over whole (status, features, metadata) and was not
    extracted in this pass. Any other video keeps the shard's keys that this pass does not
    compute (adding a modality) and the shard's errors of stages that did not run; if this pass
    failed on a video the shard holds, the video keeps everything and the failure becomes an
    error of this pass's modalities (finished work is never dropped). Only arrays that still
    match the marker's checksums are carried (a repair keeps every valid modality); a damaged
    modality this pass does not recompute is left out and listed as an error of each video that
    had it (stage "store"), so failures.jsonl names it and a later run can add it again.
    """
    marker = read_marker(base_dir)
    group = zarr.open_group(str(base_dir), mode="r")
    good, lost = _carriable(base_dir, marker)
    lost_modalities = _lost_modalities(lost, pass_keys)
    rows = {vid: i for i, vid in enumerate(marker["ok"])}
    failed = {f["video_id"]: {k: x for k, x in f.items() if k != "video_id"} for f in marker["failed"]}
    info_by_video = group.attrs["videos"]
    decode_ok = all(k in good for k in DECODE_KEYS)
    for v in videos:
        vid = v["video_id"]
        carry = bool(v.get("carry"))
        if vid not in rows or (carry and not decode_ok):
            if carry:
                v["failed"] = failed.get(vid) or {"stage": "extract", "reason": "not in the shard it was carried from"
                                                  if vid not in rows else "its stored frame indices are damaged"}
            continue
        row, info = rows[vid], info_by_video[vid]

        def take_decode_fields() -> None:  # what decoding gave this video, as the shard holds it
            v.update(fps=info.get("fps", 0.0), num_frames=info.get("num_frames", 0), decoder=info.get("decoder"),
                     size=info.get("size"), frame_indices=good["frame_indices"][row],
                     timestamps=good["timestamps"][row])

        if not carry and sources_changed(info.get("source"), v.get("path", ""), v.get("streams")):
            _forget_old_source(v, marker, row, pass_keys)
            continue
        if carry:
            keys = set(STORE_KEYS)
            take_decode_fields()
            v.update(failed=None, errors=list(info.get("errors", [])), model_meta=dict(info.get("model_meta", {})),
                     source=info.get("source"))
        else:
            keys = set(STORE_KEYS) - pass_keys
            if v.get("failed") and decode_ok:  # this pass could not redo it: keep the shard's row, list the failure
                v["errors"] = v.get("errors", []) + [{**v["failed"], "reason": f"{v['failed']['reason']} (adding "
                                                       f"{', '.join(sorted(pass_keys))}; the rest kept)"}]
                v["failed"] = None
                keys = set(STORE_KEYS)
                take_decode_fields()
                v["source"] = info.get("source")
            kept = [e for e in info.get("errors", []) if e.get("stage") not in pass_stages
                    and not (e.get("stage") == "store" and set(MODALITIES[e["modality"]].store_keys) <= pass_keys)]
            v["errors"] = kept + v.get("errors", [])
            v["model_meta"] = {**info.get("model_meta", {}), **v.get("model_meta", {})}
        for key in sorted(keys):
            if key in good and marker["present"].get(key, [False] * len(rows))[row]:
                v["features"][key] = good[key][row]
        had = [m for m in lost_modalities if marker["present"].get(MODALITIES[m].store_keys[0], [False] * len(rows))[row]]
        v["errors"] = v["errors"] + [{"stage": "store", "modality": m, "reason": f"{m} features damaged in the store "
                                      f"({lost_modalities[m]}); add them again with features.modalities=[{m}]"}
                                     for m in had if not v.get("failed")]
    return {m: h for m, h in marker.get("hashes", {}).items() if m not in lost_modalities}


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


