"""The feature store's format and its read side: what both the writer (pipeline.store) and the
trainer need, and nothing that writes.

Layout under ``<out>/<dataset>/``::

    store.json                       dataset and the registry: per modality its config hash and
                                     hashed config (a modality added later joins it)
    shards.jsonl                     the append-only shard manifest: which videos each shard owns
    LOCK.json                        the writer's lease while an extraction runs (host, pid, heartbeat)
    <split>/<shard_id>.zarr/         one Zarr v3 group per output shard
        <key>                        one array per store key (core.modalities.STORE_KEYS),
                                     [n_videos_ok, *per_video_shape], one chunk per video, all
                                     chunks in one Zarr shard file; each chunk zstd + crc32c
                                     (checked on every read; stores from before have no crc32c)
        frame_indices, timestamps    [n_videos_ok, F]
        raw/<raw_dir(video_id)>/<map> optional raw derived maps (depth, flow, normal) at source size
        _SUCCESS.json                the marker, written LAST, inside the group, before the rename;
                                     it also records each video's source (core.provenance)
    failures.jsonl                   every failed video or missing modality, rebuilt from markers
    report.json                      the run report (see pipeline.report)

A shard is valid only if its marker parses, every modality hash it carries equals the store's
registry entry, it lists the expected video ids, and every array it lists exists with the listed
shape; readers see valid shards only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr

from core.features import combined_hash
from core.modalities import STORE_KEYS

STORE_FORMAT = "crema-store/2"
OLD_FORMATS = ("crema-store/1",)
MARKER = "_SUCCESS.json"
STORE_META = "store.json"
FAILURES = "failures.jsonl"
MANIFEST = "shards.jsonl"
LOCK = "LOCK.json"
# A writer replaces a shard by two renames; a reader that finds no marker waits this long for the new one.
REWRITE_WAIT_TRIES = 5
REWRITE_WAIT_S = 0.1

log = logging.getLogger("crema.store")


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


RAW_DIR_MAX = 128  # bytes: a file name may have 255 (NAME_MAX); an id may be longer than that


def raw_dir(video_id: str) -> str:
    """The folder of a video's raw maps inside its shard: the id itself when it is short enough
    to be a file name anywhere, else a deterministic prefix + hash (a 255-character video name's
    id is longer than a file name may be)."""
    if len(video_id.encode()) <= RAW_DIR_MAX:
        return video_id
    digest = hashlib.sha256(video_id.encode()).hexdigest()[:16]
    return f"{video_id.encode()[:96].decode(errors='ignore')}-{digest}"


def read_marker(shard_dir: Path) -> dict | None:
    try:
        return json.loads((Path(shard_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def read_store_meta(root: Path) -> dict:
    """store.json of the store at ``root``; StoreError naming what to do when it is missing or
    was written by an older format."""
    path = Path(root) / STORE_META
    if not path.exists():
        raise StoreError(
            f"no feature store at {root} ({STORE_META} missing). Run the extractor first, e.g. "
            f"`make extract DATASET={Path(root).name}`, or point `out=` at the folder that holds it."
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != STORE_FORMAT:
        raise StoreMismatchError(
            f"{root} is a {meta.get('format')!r} store; this version reads {STORE_FORMAT!r} (one config hash per "
            f"modality). Extract it again into another OUT, or pass store.overwrite=true to replace it."
        )
    return meta


def registry(meta: dict) -> dict[str, str]:
    """{modality: config hash} of a store's store.json."""
    return {m: info["hash"] for m, info in meta.get("modalities", {}).items()}


def shard_is_valid(shard_dir: Path, *, hashes: dict[str, str], video_ids: Iterable[str] | None = None) -> bool:
    """True when the shard's marker is present, each modality hash it carries equals ``hashes``
    (the store's registry), the ids match, and every listed array is in place."""
    marker = read_marker(shard_dir)
    if marker is None or not marker.get("hashes"):
        return False
    if any(hashes.get(m) != h for m, h in marker["hashes"].items()):
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


def read_verified(shard_dir: Path, key: str, info: dict) -> np.ndarray:
    """One array of a shard, read whole and checked against its marker entry ``info`` (shape,
    dtype, sha256); StoreError saying what is wrong otherwise."""
    try:
        data = np.asarray(_read_checked(Path(shard_dir) / key))
    except Exception as exc:  # a flipped byte fails the chunk's crc32c (or, in an old store, decoding)
        raise StoreError(f"unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    if list(data.shape) != list(info["shape"]) or str(data.dtype) != info["dtype"]:
        raise StoreError(f"{data.dtype} {list(data.shape)}, the marker says {info['dtype']} {info['shape']}")
    if "sha256" in info and array_digest(data) != info["sha256"]:
        raise StoreError(f"checksum {array_digest(data)} != {info['sha256']} in the marker")
    return data


def corrupt_arrays(shard_dir: Path) -> dict[str, str]:
    """{array key: what is wrong} for every array of a shard that does not read back with the
    shape, dtype and sha256 its marker recorded ({} when all do, or when there is no marker).
    Reads the whole shard."""
    problems = {}
    for key, info in sorted((read_marker(shard_dir) or {}).get("arrays", {}).items()):
        try:
            read_verified(shard_dir, key, info)
        except StoreError as exc:
            problems[key] = str(exc)
    return problems


def verify_shard(shard_dir: Path) -> list[str]:
    """What is wrong with a shard's data against its marker's checksums ([] when every array
    reads back with the recorded shape, dtype and sha256). Reads the whole shard."""
    if read_marker(shard_dir) is None:
        return [f"no readable {MARKER}"]
    return [f"{key}: {problem}" for key, problem in corrupt_arrays(shard_dir).items()]


def marker_problems(shard_dir: Path, marker: dict, *, hashes: dict[str, str], video_ids=None) -> list[str]:
    """Every field of a marker that the reader trusts, checked against the shard's place, the
    manifest's ``video_ids``, the store's registry ``hashes`` and the group's own attributes."""
    shard_dir = Path(shard_dir)
    out = []
    if f"{marker.get('split')}/{marker.get('shard_id')}.zarr" != f"{shard_dir.parent.name}/{shard_dir.name}":
        out.append(f"marker names {marker.get('split')}/{marker.get('shard_id')}, not its folder")
    listed = list(marker.get("video_ids", []))
    if video_ids is not None and listed != list(video_ids):
        out.append("video_ids differ from the manifest's")
    ok, failed = list(marker.get("ok", [])), [f.get("video_id") for f in marker.get("failed", [])]
    if sorted(ok + failed) != sorted(listed) or len(set(ok)) != len(ok):
        out.append(f"ok {len(ok)} + failed {len(failed)} do not partition its {len(listed)} videos")
    for m, h in marker.get("hashes", {}).items():
        if hashes.get(m) != h:
            out.append(f"{m} hash {h} is not the store's {hashes.get(m)}")
    arrays = marker.get("arrays", {})
    for key, mask in marker.get("present", {}).items():
        if len(mask) != len(ok) or key not in arrays:
            out.append(f"present[{key}] does not match its {len(ok)} rows and arrays")
    for key, info in arrays.items():
        if not key.startswith("raw/") and info["shape"][:1] != [len(ok)]:
            out.append(f"{key} has {info['shape'][:1]} rows for {len(ok)} ok videos")
    try:
        attrs = dict(zarr.open_group(str(shard_dir), mode="r").attrs)
    except Exception as exc:
        return out + [f"group unreadable ({type(exc).__name__})"]
    if list(attrs.get("ok", [])) != ok or sorted(attrs.get("videos", {})) != sorted(ok):
        out.append("the group's attributes list other videos than the marker")
    return out


def collect_markers(root: Path, *, hashes: dict[str, str], verify: bool = False) -> dict[str, dict]:
    """Markers of every valid shard under ``root``, keyed by relative shard path; with `verify`,
    a shard whose data does not match its marker's checksums is left out (read in full)."""
    out = {}
    for shard_dir in sorted(Path(root).glob("*/*.zarr")):
        if shard_is_valid(shard_dir, hashes=hashes) and not (verify and verify_shard(shard_dir)):
            out[f"{shard_dir.parent.name}/{shard_dir.name}"] = read_marker(shard_dir)
    return out


def _chunk_files(array_dir: Path, shape, grid) -> list[Path]:
    """The files a regular chunk grid of ``grid``-sized chunks (Zarr shards: writers put a whole
    array in one) needs for an array of ``shape``."""
    if not shape or 0 in shape:
        return []
    counts = [range(-(-n // c)) for n, c in zip(shape, grid)]
    return [Path(array_dir, "c", *map(str, idx)) for idx in itertools.product(*counts)]


def _missing_chunks(array_dir: Path, array: zarr.Array) -> list[Path]:
    """Chunk files of ``array`` that are not on disk (Zarr would read them as fill values)."""
    return [p for p in _chunk_files(array_dir, array.shape, array.shards or array.chunks) if not p.is_file()]


def has_chunk_checksums(array_dir: Path) -> bool:
    """True when the array's chunks carry a crc32c that every read checks (stores written since
    issue 20); older arrays read the same way, without that check."""
    meta = json.loads((Path(array_dir) / "zarr.json").read_text())
    codecs = meta.get("codecs", [])
    inner = codecs[0].get("configuration", {}).get("codecs", []) if codecs and codecs[0]["name"] == "sharding_indexed" else codecs
    return any(c.get("name") == "crc32c" for c in inner)


def _read_checked(array_dir: Path):
    """An array's whole data; a chunk file that is gone is an error (Zarr would return zeros)."""
    array = zarr.open_array(str(array_dir), mode="r")
    missing = _missing_chunks(array_dir, array)
    if missing:
        raise StoreError(f"{missing[0]} is missing (Zarr would read it as zeros)")
    return array[...]


def _marker_signature(shard_dir: Path) -> tuple | None:
    """Identity of the marker file on disk: a rewritten shard has a new one (new inode: markers
    are written by rename)."""
    try:
        st = os.stat(Path(shard_dir) / MARKER)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _frames(array: zarr.Array, row: int, frames) -> np.ndarray:
    """Stored frames ``frames`` (any order, repeats allowed) of one video: one basic read per
    frame chunk. Zarr's (3.1.6) orthogonal selection gives the same values ~9x slower on
    full-size features: 0.29 s against 0.033 s for 4 of 8 frames of 257 x 1408, measured here."""
    idx = [int(f) for f in np.asarray(frames, dtype=np.int64).reshape(-1)]
    return np.stack([array[row, f] for f in idx]) if idx else array[row, :0]


@dataclass
class _Shard:
    """What a reader took from one shard's marker, and which marker file that was."""

    signature: tuple | None
    rows: dict[str, int]
    present: dict[str, dict[str, bool]]

    @classmethod
    def from_marker(cls, marker: dict, signature: tuple | None) -> "_Shard":
        rows = {vid: i for i, vid in enumerate(marker["ok"])}
        present = {vid: {k: bool(mask[i]) for k, mask in marker["present"].items()} for vid, i in rows.items()}
        return cls(signature, rows, present)


class FeatureStore:
    """Read-only view of a store: only shards with a valid marker are visible.

    Every read checks the chunk's crc32c and that its file exists, and that the shard is still
    the one this reader indexed (a repair or retry that rewrote it moves rows: the reader then
    re-reads that shard's marker).

    >>> fs = FeatureStore("outputs/features/demo", expected_hashes=modality_hashes(cfg.features, ["rgb"]))
    >>> fs.get("demo_0003", "rgb").shape      # (F_stored, tokens, dim) float16
    """

    def __init__(self, root: str | Path, expected_hashes: dict[str, str] | None = None, *, verify: bool = False):
        self.root = Path(root)
        self.info = read_store_meta(self.root)
        self.hashes = registry(self.info)
        self.config_hash = combined_hash(self.hashes)
        self._check_expected(expected_hashes or {})
        self._index: dict[str, Path] = {}
        self._shards: dict[Path, _Shard] = {}
        self.modalities: dict[str, dict] = {}
        # verify: check every shard's data against its marker's checksums first (reads the store once)
        for rel, marker in collect_markers(self.root, hashes=self.hashes, verify=verify).items():
            shard_dir = self.root / rel
            self._shards[shard_dir] = _Shard.from_marker(marker, _marker_signature(shard_dir))
            self._index.update({vid: shard_dir for vid in marker["ok"]})
            for key, info in marker["arrays"].items():
                if key in STORE_KEYS:
                    self.modalities.setdefault(key, {"shape": tuple(info["shape"][1:]), "dtype": info["dtype"]})
        self.video_ids = sorted(self._index)
        self._arrays: dict[tuple[Path, str], zarr.Array] = {}
        self._groups: dict[Path, zarr.Group] = {}
        self._warned_unchecked = False

    def _check_expected(self, expected_hashes: dict[str, str]) -> None:
        for m, want in expected_hashes.items():
            have = self.hashes.get(m)
            if have is None:
                raise StoreError(
                    f"store {self.root} has no {m!r} features (it has {sorted(self.hashes)}). Add them with the "
                    f"same features config: make extract ... ARGS=\"features.modalities=[{','.join([*self.hashes, m])}]\""
                )
            if have != want:
                raise StoreMismatchError(
                    f"store {self.root} holds {m!r} features made with config {have}, but this config expects "
                    f"{want}. Use the same `features` preset and overrides as the extraction run, or re-extract "
                    f"into another OUT."
                )

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._index

    def _fresh(self, shard_dir: Path) -> _Shard:
        """The shard as it is on disk now: re-read when its marker file changed since it was indexed."""
        shard = self._shards[shard_dir]
        signature = _marker_signature(shard_dir)
        for _ in range(REWRITE_WAIT_TRIES):  # a writer swaps a shard by two renames: a short gap
            if signature is not None:
                break
            time.sleep(REWRITE_WAIT_S)
            signature = _marker_signature(shard_dir)
        if signature == shard.signature:
            return shard
        marker = read_marker(shard_dir)
        if marker is None or not shard_is_valid(shard_dir, hashes=self.hashes):
            raise StoreError(f"shard {shard_dir} changed while this reader had it open and is not valid now; "
                             f"wait for the extraction run that is rewriting it, then open the store again")
        self._arrays = {k: a for k, a in self._arrays.items() if k[0] != shard_dir}
        self._groups.pop(shard_dir, None)
        shard = self._shards[shard_dir] = _Shard.from_marker(marker, signature)
        return shard

    def _locate(self, video_id: str) -> tuple[Path, int]:
        shard_dir = self._index.get(video_id)
        if shard_dir is None:
            raise KeyError(
                f"video {video_id!r} is not in store {self.root} (failed, not extracted yet, or another "
                f"dataset); see {self.root / FAILURES}"
            )
        shard = self._fresh(shard_dir)
        if video_id not in shard.rows:
            raise StoreError(f"video {video_id!r} is no longer in {shard_dir}: a run rewrote that shard since this "
                           f"reader opened the store (see {self.root / FAILURES}); open the store again")
        return shard_dir, shard.rows[video_id]

    def has(self, video_id: str, modality: str) -> bool:
        shard_dir, _ = self._locate(video_id)
        return bool(self._shards[shard_dir].present[video_id].get(modality, False))

    def _array(self, shard_dir: Path, key: str) -> zarr.Array:
        handle = self._arrays.get((shard_dir, key))
        if handle is None:
            if not self._warned_unchecked and not has_chunk_checksums(shard_dir / key):
                self._warned_unchecked = True
                log.warning("%s was written without chunk checksums (before crc32c chunks): corrupt bytes are "
                            "caught by `make verify` only; re-extract into a new OUT to have them checked on read",
                            shard_dir)
            handle = zarr.open_array(str(shard_dir / key), mode="r")
            self._arrays[(shard_dir, key)] = handle
        return handle

    def _read(self, shard_dir: Path, key: str, select) -> np.ndarray:
        """``select(array)`` on a shard's array; a missing chunk file or a failed crc32c is a StoreError."""
        try:
            array = self._array(shard_dir, key)
            missing = _missing_chunks(shard_dir / key, array)
            if missing:
                raise StoreError(f"{missing[0]} is missing (Zarr would read it as zeros)")
            return select(array)
        except (StoreError, ValueError, RuntimeError, OSError) as exc:
            raise StoreError(f"store {self.root}: {shard_dir.name}/{key} cannot be read ({str(exc)[:200]}); the "
                             f"store is damaged: `make verify` lists what, `make extract ... ARGS=\"store.verify=true\"` "
                             f"redoes those shards") from None

    def get(self, video_id: str, modality: str, frames=None) -> np.ndarray:
        """One video's array for ``modality`` (only the stored frames ``frames``, in that order,
        when given: frame modalities are chunked per frame, so only those are read); KeyError if
        that modality is missing for the video, StoreError if its bytes are damaged or missing."""
        for _ in range(REWRITE_WAIT_TRIES):
            shard_dir, row = self._locate(video_id)
            signature = self._shards[shard_dir].signature
            if modality not in ("frame_indices", "timestamps") and not self.has(video_id, modality):
                raise KeyError(f"video {video_id!r} has no {modality!r} features (see {self.root / FAILURES})")
            if frames is None:
                out = self._read(shard_dir, modality, lambda a: a[row])
            else:
                out = self._read(shard_dir, modality, lambda a: _frames(a, row, frames))
            if _marker_signature(shard_dir) == signature:  # not rewritten while we read it
                return out
        raise StoreError(f"shard {shard_dir} keeps being rewritten while it is read; wait for the run writing it")

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
        path = shard_dir / "raw" / raw_dir(video_id) / name
        if not path.exists():
            raise KeyError(f"no raw {name!r} map for {video_id!r}; re-extract with store.raw_maps=true")
        return self._read(shard_dir, f"raw/{raw_dir(video_id)}/{name}", lambda a: a[0])
