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
                                     chunks in one Zarr shard file
        frame_indices, timestamps    [n_videos_ok, F]
        raw/<raw_dir(video_id)>/<map> optional raw derived maps (depth, flow, normal) at source size
        _SUCCESS.json                the marker, written LAST, inside the group, before the rename
    failures.jsonl                   every failed video or missing modality, rebuilt from markers
    report.json                      the run report (see pipeline.report)

A shard is valid only if its marker parses, every modality hash it carries equals the store's
registry entry, it lists the expected video ids, and every array it lists exists with the listed
shape; readers see valid shards only.
"""

from __future__ import annotations

import hashlib
import json
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


def collect_markers(root: Path, *, hashes: dict[str, str], verify: bool = False) -> dict[str, dict]:
    """Markers of every valid shard under ``root``, keyed by relative shard path; with `verify`,
    a shard whose data does not match its marker's checksums is left out (read in full)."""
    out = {}
    for shard_dir in sorted(Path(root).glob("*/*.zarr")):
        if shard_is_valid(shard_dir, hashes=hashes) and not (verify and verify_shard(shard_dir)):
            out[f"{shard_dir.parent.name}/{shard_dir.name}"] = read_marker(shard_dir)
    return out


class FeatureStore:
    """Read-only view of a store: only shards with a valid marker are visible.

    >>> fs = FeatureStore("outputs/features/demo", expected_hashes=modality_hashes(cfg.features, ["rgb"]))
    >>> fs.get("demo_0003", "rgb").shape      # (F_stored, tokens, dim) float16
    """

    def __init__(self, root: str | Path, expected_hashes: dict[str, str] | None = None, *, verify: bool = False):
        self.root = Path(root)
        self.info = read_store_meta(self.root)
        self.hashes = registry(self.info)
        self.config_hash = combined_hash(self.hashes)
        for m, want in (expected_hashes or {}).items():
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
        self._index: dict[str, tuple[Path, int]] = {}
        self._present: dict[str, dict[str, bool]] = {}
        self._meta: dict[str, dict] = {}
        self.modalities: dict[str, dict] = {}
        # verify: check every shard's data against its marker's checksums first (reads the store once)
        for rel, marker in collect_markers(self.root, hashes=self.hashes, verify=verify).items():
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

    def get(self, video_id: str, modality: str, frames=None) -> np.ndarray:
        """One video's array for ``modality`` (only the stored frames ``frames``, in that order,
        when given: frame modalities are chunked per frame, so only those are read); KeyError if
        that modality is missing for the video."""
        shard_dir, row = self._locate(video_id)
        if modality not in ("frame_indices", "timestamps") and not self.has(video_id, modality):
            raise KeyError(f"video {video_id!r} has no {modality!r} features (see {self.root / FAILURES})")
        array = self._array(shard_dir, modality)
        if frames is None:
            return array[row]
        return array.get_orthogonal_selection((row, np.asarray(frames, dtype=np.int64)))

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
        return zarr.open_array(str(path), mode="r")[0]
