"""HDF5 interop: export a store's features to the .h5 layouts VideoQA codebases read, and import
such files (ours, or features extracted elsewhere) into a new store.

One file per store key (core.modalities.STORE_KEYS), in one of two layouts::

    per_video   /<video_id>                   one dataset per video: that video's array
    stacked     /<key> [N, ...], /ids [N]     row i belongs to ids[i] (utf-8); N = videos that have it

Both are chunked one video per chunk and compressed (gzip); the file's attrs carry the store's
config hash, dataset, store format, the store key (`modality`), the per-video shape and dtype.
The importer tells the layouts apart by the `ids` dataset, validates every array against the
modality table, and writes real shards (pipeline.store.write_shard) into a NEW store, so the
trainer reads it like an extracted one. Imported videos have no source frame indices: their
`frame_indices` are -1 and `timestamps` NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm import tqdm

from core.features import combined_hash, modality_hashes, modality_views
from core.modalities import MODALITIES, STORE_KEYS, Modality
from core.schema import SPLITS, DatasetIndex, VideoEntry, safe_video_id
from core.store import FAILURES, STORE_FORMAT, STORE_META, FeatureStore
from core.util import TMP_PREFIX, write_json_atomic
from pipeline.manifest import build_manifest
from pipeline.report import build_report
from pipeline.store import init_store, write_failures, write_shard

H5_FORMAT = "crema-h5/1"
LAYOUTS = ("per_video", "stacked")
IDS = "ids"
RANK = {"frame": 3, "clip": 3, "points": 2}  # features: [frames|chunks, tokens, dim] or [points, dim]


class H5Error(ValueError):
    """A request the export or import cannot honour as asked (what, where, and what to do)."""


def owner(key: str) -> Modality:
    """The modality a store key belongs to; its first store key is the features."""
    for row in MODALITIES.values():
        if key in row.store_keys:
            return row
    raise H5Error(f"{key!r} is not a store key; choose from {list(STORE_KEYS)}")


# --------------------------------------------------------------------------- export


def export_keys(fs: FeatureStore, requested) -> list[str]:
    """The store keys to export: `all` (every key the store holds) or the names asked for."""
    have = [k for k in STORE_KEYS if k in fs.modalities]
    if not have:
        raise H5Error(f"store {fs.root} holds no features yet (no valid shards); run `make extract` first")
    names = [requested] if isinstance(requested, str) else list(requested)
    if names == ["all"]:
        return have
    unknown = [n for n in names if n not in have]
    if unknown:
        raise H5Error(f"store {fs.root} has no {', '.join(map(repr, unknown))} features; it has "
                      f"{', '.join(have)} (or all)")
    return names


@contextmanager
def atomic_h5(path: Path) -> Iterator[h5py.File]:
    """An h5 file written beside `path` and renamed over it only once complete and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_store(root: str | Path, *, modality="all", layout: str = "per_video", out_dir: str | Path | None = None,
                 compression: str = "gzip", level: int = 4) -> list[dict]:
    """Write each requested store key of the store at `root` to `<out_dir>/<key>.h5` (default
    `<root>/export/`); one summary per file."""
    if layout not in LAYOUTS:
        raise H5Error(f"export.layout={layout!r}: choose from {list(LAYOUTS)}")
    if compression not in ("gzip", "none") or not 0 <= int(level) <= 9:
        raise H5Error(f"export.compression={compression!r} level={level}: use gzip with a level 0..9, or none")
    fs = FeatureStore(root)
    keys = export_keys(fs, modality)
    filters = {} if compression == "none" else {"compression": "gzip", "compression_opts": int(level)}
    out_dir = Path(out_dir) if out_dir else fs.root / "export"
    return [export_key(fs, key, out_dir / f"{key}.h5", layout=layout, filters=filters) for key in keys]


def export_key(fs: FeatureStore, key: str, path: Path, *, layout: str, filters: dict) -> dict:
    """One store key -> one .h5 file; videos lacking it are skipped and counted."""
    ids = [v for v in fs.video_ids if fs.has(v, key)]
    shape, dtype = tuple(fs.modalities[key]["shape"]), np.dtype(fs.modalities[key]["dtype"])
    summary = {"modality": key, "path": str(path), "layout": layout, "videos": len(ids),
               "skipped": len(fs) - len(ids), "shape": list(shape), "dtype": str(dtype)}
    with atomic_h5(path) as f:
        f.attrs.update({"format": H5_FORMAT, "store_format": fs.info.get("format", STORE_FORMAT),
                        "config_hash": fs.hashes.get(owner(key).name, ""),
                        "dataset": fs.info.get("dataset", fs.root.name),
                        "modality": key, "layout": layout, "shape": np.asarray(shape, np.int64),
                        "dtype": str(dtype), "num_videos": len(ids), "skipped": summary["skipped"],
                        "features": json.dumps(fs.info.get("modalities", {}).get(owner(key).name, {}).get("features", {}),
                                               sort_keys=True)})
        rows = tqdm(ids, desc=f"export {key}", unit="video", dynamic_ncols=True)
        if layout == "stacked":
            data = f.create_dataset(key, shape=(len(ids), *shape), dtype=dtype, chunks=(1, *shape), **filters)
            f.create_dataset(IDS, data=ids, dtype=h5py.string_dtype("utf-8"))
            for i, vid in enumerate(rows):
                data[i] = _row(fs, vid, key, shape)
        else:
            for vid in rows:
                f.create_dataset(vid, data=_row(fs, vid, key, shape), chunks=shape, **filters)
    return summary


def _row(fs: FeatureStore, vid: str, key: str, shape: tuple) -> np.ndarray:
    arr = fs.get(vid, key)
    if arr.shape != shape:  # shards agree within themselves; a file needs one shape across all of them
        raise H5Error(f"store {fs.root}: video {vid!r} has {key} of shape {list(arr.shape)}, other shards "
                      f"{list(shape)}; one .h5 file needs one per-video shape (re-extract the odd shards)")
    return arr


# --------------------------------------------------------------------------- import: one file


@dataclass
class H5Source:
    """One .h5 file opened for import: its store key, layout, ids and where each id's array is."""

    path: Path
    file: h5py.File
    key: str
    layout: str
    rows: dict[str, str | int]      # safe video id -> dataset name (per_video) or row (stacked)
    shape: tuple[int, ...]
    dtype: np.dtype
    array: str | None = None        # the stacked array's name
    renamed: dict[str, str] = field(default_factory=dict)  # raw id -> safe id, where they differ

    def __contains__(self, vid: str) -> bool:
        return vid in self.rows

    def read(self, vid: str) -> np.ndarray:
        where = self.rows[vid]
        arr = self.file[self.array][where] if self.layout == "stacked" else self.file[where][()]
        return finite(self.path, self.key, vid, arr)

    @property
    def attrs(self) -> dict:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.file.attrs.items()}


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


# --------------------------------------------------------------------------- import: what a file may hold
# A feature file comes from elsewhere: HDF5 can make a 1 KB file read any local file (external
# storage, virtual datasets, external links) or declare an array of any size. Only data stored in
# the file itself is read, and only after its size is checked against the limits.

IN_FILE_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}
FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_MAX_VIDEO_MB = 256      # one video's array (the full-size rgb preset: ~6 MB)
DEFAULT_MAX_VIDEOS = 10_000_000


def check_links(path: Path, f: h5py.File) -> None:
    """Hard and soft links only: an external link reads another file."""
    def foreign(name: str) -> str | None:  # returning a value stops the walk (an exception must not cross it)
        return None if isinstance(f.get(name, getlink=True), (h5py.HardLink, h5py.SoftLink)) else name

    name = f.visit_links(foreign)
    if name is not None:
        link = f.get(name, getlink=True)
        raise H5Error(f"{path}: {name!r} is a link to another file ({type(link).__name__} -> "
                      f"{getattr(link, 'filename', '?')}); only data stored in the file itself is imported: copy "
                      f"it in (e.g. h5copy) first")


def check_plain(path: Path, name: str, data: h5py.Dataset) -> None:
    """A dataset whose bytes are stored in this file (contiguous, chunked or compact)."""
    plist = data.id.get_create_plist()
    layout = plist.get_layout()
    if data.is_virtual or layout == h5py.h5d.VIRTUAL:
        raise H5Error(f"{path}: dataset {name!r} is a virtual dataset (its data comes from other files); only data "
                      f"stored in the file itself is imported: materialise it (e.g. h5repack) first")
    if plist.get_external_count():
        raise H5Error(f"{path}: dataset {name!r} keeps its data in external files (HDF5 external storage, e.g. "
                      f"{plist.get_external(0)[0].decode(errors='replace')!r}); only data stored in the file itself "
                      f"is imported: repack it first")
    if layout not in IN_FILE_LAYOUTS:
        raise H5Error(f"{path}: dataset {name!r} has storage layout {layout}; only contiguous, chunked or compact "
                      f"datasets are imported")


def check_size(path: Path, name: str, shape: tuple, dtype: np.dtype, max_video_mb: float) -> None:
    """One video's array must fit ``max_video_mb`` (checked from the declared shape, before reading)."""
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > max_video_mb * 2**20:
        raise H5Error(f"{path}: {name!r} declares {nbytes / 2**20:.1f} MiB per video ({dtype} {list(shape)}), more "
                      f"than import.max_video_mb={max_video_mb:g}; raise the limit if the file is trusted and that "
                      f"is right")


def finite(path: Path, key: str, vid: str, arr: np.ndarray) -> np.ndarray:
    """Features are finite: a NaN or inf would train on nothing, silently. Refused, naming the video."""
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise H5Error(f"{path}: video {vid!r} has {bad} NaN/inf values in its {key} features; fix or drop that "
                          f"video in the file and import again (nothing was written)")
    return arr


def _decode_ids(path: Path, ids_key: str, ids: h5py.Dataset, max_videos: int) -> list[str]:
    """The ids of a stacked file as text, each valid UTF-8, no more than ``max_videos``."""
    if ids.ndim != 1 or ids.dtype.kind not in "SOU" or (ids.dtype.kind == "O" and not h5py.check_string_dtype(ids.dtype)):
        raise H5Error(f"{path}: {ids_key!r} must be a 1-D dataset of strings, got {ids.dtype} {list(ids.shape)}")
    if ids.shape[0] > max_videos:
        raise H5Error(f"{path}: {ids_key!r} declares {ids.shape[0]} ids, more than import.max_videos={max_videos}")
    out = []
    for row, r in enumerate(ids[()]):
        try:
            out.append(r.decode("utf-8") if isinstance(r, bytes) else str(r))
        except UnicodeDecodeError:
            raise H5Error(f"{path}: {ids_key!r} row {row} is not valid UTF-8 ({r[:40]!r}); write the ids as UTF-8 "
                          f"text") from None
    return out


def _stacked_layout(path: Path, f: h5py.File, ids_key: str, array: str | None, max_videos: int = DEFAULT_MAX_VIDEOS):
    others = [n for n in _datasets(f) if n != ids_key]
    if array is None:
        if len(others) != 1:
            raise H5Error(f"{path}: has {ids_key!r} (stacked layout) and {len(others)} other datasets "
                          f"{others[:5]}; name the features with import.array_key")
        array = others[0]
    if array not in f:
        raise H5Error(f"{path}: no dataset {array!r} (import.array_key); it has {others[:5]}")
    data, ids_set = f[array], f[ids_key]
    if not isinstance(data, h5py.Dataset) or not data.shape:
        raise H5Error(f"{path}: {array!r} is not an array of rows (one per id)")
    check_plain(path, ids_key, ids_set)
    if ids_set.ndim != 1 or ids_set.shape[0] != data.shape[0]:
        raise H5Error(f"{path}: {ids_key!r} has shape {ids_set.shape} but {array!r} has {data.shape[0]} rows")
    ids = _decode_ids(path, ids_key, ids_set, max_videos)
    return array, ids, list(range(len(ids))), tuple(data.shape[1:]), data.dtype


def _per_video_layout(path: Path, f: h5py.File):
    sets = _datasets(f)
    if not sets:
        raise H5Error(f"{path}: holds no datasets")
    shapes = {(d.shape, d.dtype) for d in sets.values()}
    if len(shapes) > 1:
        raise H5Error(f"{path}: videos have different shapes/dtypes {sorted(map(str, shapes))[:4]}; every video "
                      f"of a modality must have the same per-video shape")
    (shape, dtype), = shapes
    return None, list(sets), list(sets), tuple(shape), dtype


def _layout(f: h5py.File, ids_key: str) -> str:
    """Our files say their layout; any other file is stacked when it has an ids dataset."""
    said = f.attrs.get("layout")
    said = said.decode() if isinstance(said, bytes) else said
    if said in LAYOUTS and f.attrs.get("format") == H5_FORMAT:
        return said
    return "stacked" if ids_key in f else "per_video"


def _safe_rows(path: Path, raw_ids: list[str], where: list) -> tuple[dict, dict]:
    """Video ids as the dataset adapters make them (core.schema.safe_video_id), each once."""
    rows, renamed = {}, {}
    for raw, w in zip(raw_ids, where):
        try:
            vid = safe_video_id(raw)
        except ValueError as exc:
            raise H5Error(f"{path}: video id {raw!r}: {exc}") from None
        if vid in rows:
            raise H5Error(f"{path}: video id {raw!r} appears twice (as safe id {vid!r})")
        rows[vid] = w
        if vid != raw:
            renamed[raw] = vid
    return rows, renamed


def check_array(key: str, shape: tuple, dtype: np.dtype, where: str) -> None:
    """The per-video shape and dtype the trainer expects for this store key."""
    row = owner(key)
    if key == row.store_keys[0]:
        ok_dtype, ok_shape = dtype in FLOATS, len(shape) == RANK[row.kind]
        want = f"float16/32/64, {RANK[row.kind]} dims"
    else:  # the voxel coordinates beside a point modality's features
        ok_dtype, ok_shape, want = dtype == np.uint8, len(shape) == 2 and shape[1] == 3, "uint8 [points, 3]"
    if not (ok_dtype and ok_shape):
        raise H5Error(f"{where}: {key} arrays are {dtype} {list(shape)} per video, expected {want}")


def open_source(path: str | Path, key: str | None, *, ids_key: str = IDS, array_key: str | None = None,
                max_video_mb: float = DEFAULT_MAX_VIDEO_MB, max_videos: int = DEFAULT_MAX_VIDEOS) -> H5Source:
    """Open one .h5 file, detect its layout and validate it as store key `key` (None: its attrs):
    in-file data only, a float16/32/64 (or xyz uint8) array of a size within the limits."""
    path = Path(path)
    if not path.is_file():
        raise H5Error(f"no such file: {path} (import.path)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise H5Error(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        key = key or f.attrs.get("modality")
        if not key:
            raise H5Error(f"{path}: no `modality` attr; say which store key it holds with import.modality=<name>")
        key = key.decode() if isinstance(key, bytes) else str(key)
        owner(key)
        check_links(path, f)
        layout = _layout(f, ids_key)
        array, raw, where, shape, dtype = (_stacked_layout(path, f, ids_key, array_key, max_videos)
                                           if layout == "stacked" else _per_video_layout(path, f))
        for name in [array] if array else where:
            check_plain(path, name, f[name])
        check_array(key, shape, np.dtype(dtype), str(path))
        check_size(path, array or key, shape, np.dtype(dtype), max_video_mb)
        rows, renamed = _safe_rows(path, raw, where)
    except UnicodeDecodeError as exc:  # a dataset name (a per-video id) or an attr that is not UTF-8
        f.close()
        raise H5Error(f"{path}: a name or attribute is not valid UTF-8 ({exc}); write ids as UTF-8 text") from None
    except BaseException:
        f.close()
        raise
    return H5Source(path, f, key, layout, rows, shape, np.dtype(dtype), array, renamed)


# --------------------------------------------------------------------------- import: several files, one store


def check_sources(sources: list[H5Source]) -> None:
    """Keys once each; a modality's keys together, on the same videos and points; frame keys share F."""
    keys = [s.key for s in sources]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise H5Error(f"store keys {dupes} come from more than one file; import each once")
    by_key = {s.key: s for s in sources}
    for key in keys:
        row = owner(key)
        lacking = [k for k in row.store_keys if k not in by_key]
        if lacking:
            raise H5Error(f"{row.name} needs {lacking} too (the trainer reads all of {list(row.store_keys)}); "
                          f"add its file to import.path (make export writes it with export.modality=all)")
        first = by_key[row.store_keys[0]]
        if set(first.rows) != set(by_key[key].rows) or first.shape[0] != by_key[key].shape[0]:
            raise H5Error(f"{first.path} and {by_key[key].path}: {row.name}'s keys must cover the same videos "
                          f"with the same number of points")
    frames = {s.key: s.shape[0] for s in sources if owner(s.key).kind == "frame"}
    if len(set(frames.values())) > 1:
        raise H5Error(f"frame modalities must share their stored frames (same frame indices); got {frames}")


def resolve_hash(sources: list[H5Source], explicit: str | None, features=None) -> tuple[dict, dict, str]:
    """({modality: config hash}, {modality: hashed config} for store.json, where the hashes came from).

    Each file's `config_hash` attr is the hash of the modality that owns its key; files of one
    modality must agree. Without attrs, the hashes of the `features` config are used."""
    names = list(dict.fromkeys(owner(s.key).name for s in sources))
    if explicit:
        return {m: str(explicit) for m in names}, {}, "import.config_hash"
    hashes, views, stamped_by = {}, {}, None
    for s in sources:
        h = s.attrs.get("config_hash")
        if not h:
            continue
        m = owner(s.key).name
        if hashes.setdefault(m, h) != h:
            raise H5Error(f"the {m} files carry different config hashes ({hashes[m]}, {h}): they come from "
                          f"different feature configs; set import.config_hash=<hash> to import them together anyway")
        views[m] = json.loads(s.attrs.get("features") or "{}")
        stamped_by = stamped_by or s.path.name
    if hashes and set(hashes) == set(names):
        return hashes, views, f"the config_hash attr of {stamped_by}"
    if features is None:
        raise H5Error("the files carry no config hash; set import.config_hash=<hash> (the trainer refuses a store "
                      "whose hash differs from its features config)")
    unstamped = [m for m in names if m not in hashes]
    return ({**modality_hashes(features, unstamped), **hashes}, {**modality_views(features, unstamped), **views},
            "the features config (what `make train` with it expects)" if not hashes else
            f"the config_hash attrs, and the features config for {unstamped}")


def check_target(root: Path, overwrite: bool) -> None:
    """Only a new store is written; an existing store is replaced only with import.overwrite=true."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / STORE_META).exists():
        raise H5Error(f"{root} exists and is not a feature store; choose another out= or dataset name")
    if not overwrite:
        raise H5Error(f"{root} already holds a feature store; choose another out= or dataset name, or pass "
                      f"import.overwrite=true to replace it")


def _video(vid: str, sources: list[H5Source], n_frames: int) -> dict:
    """A payload video (core.schema) carrying the imported arrays; a file lacking it is a masked error."""
    have = [s for s in sources if vid in s]
    return {"video_id": vid, "features": {s.key: s.read(vid) for s in have},
            "errors": [{"stage": "import", "reason": f"{s.key} not in {s.path.name}"} for s in sources if vid not in s],
            "frame_indices": np.full(n_frames, -1, np.int64), "timestamps": np.full(n_frames, np.nan),
            "model_meta": {s.key: {"imported_from": str(s.path)} for s in have}}


def write_store(tmp: Path, final: Path, sources: list[H5Source], *, dataset: str, split: str, shard_size: int,
                hashes: dict, features: dict, compression: str) -> dict:
    """Shards (sorted ids, `shard_size` each) of every video any file holds, report and failures."""
    init_store(tmp, dataset=dataset, hashes=hashes, features=features)
    ids = sorted(set().union(*(s.rows for s in sources)))
    shards = build_manifest(DatasetIndex(dataset, [VideoEntry(v, "", split) for v in ids], {}), shard_size)
    n_frames = next((s.shape[0] for s in sources if owner(s.key).kind == "frame"), 1)
    markers = {}
    with tqdm(total=len(ids), desc=f"import {dataset}", unit="video", dynamic_ncols=True) as bar:
        for spec, _ in shards:
            videos = [_video(v, sources, n_frames) for v in spec.video_ids]
            markers[spec.relpath()] = write_shard(tmp, spec, videos, hashes=hashes, compression=compression)
            bar.update(len(videos))
    failures = write_failures(tmp, markers.values())
    run = {"imported_from": {s.key: str(s.path) for s in sources}}
    report = build_report(dataset=dataset, root=final, config_hash=combined_hash(hashes), shards=shards, markers=markers,
                          failures=failures, run=run)
    write_json_atomic(tmp / "report.json", report, newline=True)
    return report


def import_h5(paths, *, root: str | Path, dataset: str, modalities=None, split: str = "train",
              shard_size: int = 8, config_hash: str | None = None, features: dict | None = None,
              overwrite: bool = False, compression: str = "auto", ids_key: str = IDS,
              array_key: str | None = None, max_video_mb: float = DEFAULT_MAX_VIDEO_MB,
              max_videos: int = DEFAULT_MAX_VIDEOS) -> dict:
    """Import .h5 files (one store key each, either layout) into a new store at `root`.

    `modalities` names each file's store key (None: each file's `modality` attr). The store is
    built in a temporary folder beside `root` and renamed into place once complete. Only data
    stored in the files themselves is read (no external storage, virtual datasets or external
    links), finite float16/32/64 features of at most `max_video_mb` per video (checked before
    reading), at most `max_videos` ids per stacked file.
    """
    root = Path(root)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    keys = modalities if isinstance(modalities, list) else [modalities] * len(paths)
    if not paths or len(keys) != len(paths):
        raise H5Error(f"import.modality names {len(keys)} keys for {len(paths)} files in import.path")
    if split not in SPLITS or int(shard_size) < 1:
        raise H5Error(f"import.split={split!r} / import.shard_size={shard_size}: a split of {list(SPLITS)}, size >= 1")
    check_target(root, overwrite)
    with ExitStack() as stack:
        sources = []
        for p, k in zip(paths, keys):
            sources.append(open_source(p, k, ids_key=ids_key, array_key=array_key, max_video_mb=max_video_mb,
                                       max_videos=max_videos))
            stack.callback(sources[-1].file.close)
        check_sources(sources)
        hashes, views, hash_from = resolve_hash(sources, config_hash, features)
        tmp = root.parent / f"{TMP_PREFIX}{root.name}.{uuid.uuid4().hex[:8]}"
        old = tmp.with_name(tmp.name + ".old")
        try:
            report = write_store(tmp, root, sources, dataset=dataset, split=split, shard_size=int(shard_size),
                                 hashes=hashes, features=views, compression=compression)
            if root.exists():  # checked above: empty, or a store we may replace
                root.rename(old)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)  # only once the new store is in place
    renamed = {raw: vid for s in sources for raw, vid in s.renamed.items()}
    return {"store": str(root), "config_hash": combined_hash(hashes), "hashes": hashes, "hash_from": hash_from,
            "videos": report["videos_ok"],
            "shards": report["shards_total"], "modalities": report["modalities"],
            "layouts": {s.key: s.layout for s in sources},
            "renamed_ids": len(renamed), "renamed_example": next(iter(renamed.items()), None),
            "failures": str(root / FAILURES)}
