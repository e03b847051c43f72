"""The shard manifest: which videos each output shard owns, stable for the life of the store.

``<store>/shards.jsonl`` is append-only: one line per shard, written (fsynced) before any of its
videos is extracted. A video keeps its shard forever, so a run with more videos writes new
shards and leaves every existing one alone, a changed ``store.shard_size`` applies to new shards
only, and a run over another batch of videos (``DATA=/batch2``) adds to the store. New videos
are grouped per split in sorted id order, numbered after the split's last shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from core.schema import SPLITS, DatasetIndex, VideoEntry
from core.store import MANIFEST, ShardSpec, read_marker

log = logging.getLogger("crema.manifest")


def _split_order(split: str) -> tuple:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def read_manifest(root: Path) -> list[ShardSpec]:
    """The shards a store has planned, in the order they were planned.

    A store written before the manifest existed is read from its shard markers instead.
    """
    path = Path(root) / MANIFEST
    specs: dict[str, ShardSpec] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        spec = _record(line)
        if spec is None:
            if n == len(lines):
                continue  # a torn last line from a crash mid-append: that shard was never started
            raise ValueError(f"{path} line {n} is not a shard record; the manifest is damaged") from None
        specs[spec.relpath()] = spec
    for marker_path in sorted(Path(root).glob("*/*.zarr/_SUCCESS.json")):
        marker = read_marker(marker_path.parent)
        if marker and f"{marker['split']}/{marker['shard_id']}.zarr" not in specs:
            spec = ShardSpec(marker["shard_id"], marker["split"], tuple(marker["video_ids"]))
            specs[spec.relpath()] = spec
    return list(specs.values())


def _record(line: str) -> ShardSpec | None:
    """The shard record of one manifest line, or None. A line an older version glued onto a torn
    record (``{"shard_id": "tr{"shard_id": ...}``) yields the complete record at its end."""
    for start in dict.fromkeys((0, line.rfind('{"shard_id"'))):
        if start < 0:
            continue
        try:
            row = json.loads(line[start:])
            return ShardSpec(row["shard_id"], row["split"], tuple(row["video_ids"]))
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _drop_torn_tail(f) -> None:
    """Cut an unterminated last line (a crash mid-append: that shard was never started) so the
    next record starts on a line of its own instead of gluing onto it."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    f.seek(0)
    keep = f.read().rfind(b"\n") + 1
    log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", f.name, size - keep)
    f.truncate(keep)


def append_manifest(root: Path, specs: list[ShardSpec], *, fence=None) -> None:
    """Append ``specs`` to the manifest, fsynced; ``fence`` (the lease's ``fenced``) serialises
    the append with the lease, so only the run holding the store appends."""
    if not specs:
        return
    lines = "".join(json.dumps({"shard_id": s.shard_id, "split": s.split, "video_ids": list(s.video_ids)}) + "\n"
                    for s in specs)
    with fence() if fence is not None else nullcontext():
        path = Path(root) / MANIFEST
        path.touch(exist_ok=True)
        with open(path, "r+b") as f:
            _drop_torn_tail(f)
            f.seek(0, os.SEEK_END)
            f.write(lines.encode())
            f.flush()
            os.fsync(f.fileno())


def new_shards(videos: list[VideoEntry], shard_size: int, existing: list[ShardSpec]) -> list[ShardSpec]:
    """Shards for ``videos`` (none of them in ``existing``): per split, sorted ids, ``shard_size``
    each, numbered after the highest shard number the split already has."""
    if shard_size < 1:
        raise ValueError(f"store.shard_size must be >= 1, got {shard_size}")
    last: dict[str, int] = {}
    for s in existing:
        try:
            last[s.split] = max(last.get(s.split, -1), int(s.shard_id.rsplit("-", 1)[1]))
        except (IndexError, ValueError):
            pass
    out = []
    for split in sorted({v.split for v in videos}, key=_split_order):
        chunk = sorted(v.video_id for v in videos if v.split == split)
        start = last.get(split, -1) + 1
        for k in range(0, len(chunk), shard_size):
            out.append(ShardSpec(f"{split}-{start + k // shard_size:05d}", split, tuple(chunk[k : k + shard_size])))
    return out


def check_unique(index: DatasetIndex) -> None:
    dupes = [vid for vid, n in Counter(v.video_id for v in index.videos).items() if n > 1]
    if dupes:
        raise ValueError(f"dataset {index.name!r} lists these video ids more than once: {dupes[:10]}")


def build_manifest(index: DatasetIndex, shard_size: int) -> list[tuple[ShardSpec, list[VideoEntry]]]:
    """Shards of a fresh store: at most ``shard_size`` videos, per split, in sorted video-id order."""
    check_unique(index)
    by_id = {v.video_id: v for v in index.videos}
    return [(spec, [by_id[v] for v in spec.video_ids]) for spec in new_shards(index.videos, shard_size, [])]


def plan_shards(root: Path, index: DatasetIndex, shard_size: int, *, fence=None) -> tuple[list[tuple[ShardSpec, list[VideoEntry]]],
                                                                          list[ShardSpec], list[ShardSpec]]:
    """This dataset's shards in the store at ``root``, planning (and recording) new ones.

    Returns (shards holding this dataset's videos with their entries; of those, the ones with
    videos this dataset does not list (they can be extracted only by a run that lists them all);
    the newly planned shards). The caller holds the store's lease (``fence``: its ``fenced``).
    """
    check_unique(index)
    existing = read_manifest(root)
    owner = {}
    for spec in existing:
        for vid in spec.video_ids:
            owner.setdefault(vid, spec)
    unplanned = [v for v in index.videos if v.video_id not in owner]
    added = new_shards(unplanned, shard_size, existing)
    append_manifest(root, added, fence=fence)
    by_id = {v.video_id: v for v in index.videos}
    mine, foreign = [], []
    for spec in sorted(existing + added, key=lambda s: (_split_order(s.split), s.shard_id)):
        listed = [by_id[v] for v in spec.video_ids if v in by_id]
        if not listed:
            continue
        if len(listed) < len(spec.video_ids):
            foreign.append(spec)
        mine.append((spec, listed))
    return mine, foreign, added
