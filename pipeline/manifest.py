"""The video manifest: which videos go into which output shard, deterministically."""

from __future__ import annotations

from collections import Counter

from core.schema import SPLITS, DatasetIndex, VideoEntry
from core.store import ShardSpec


def build_manifest(index: DatasetIndex, shard_size: int) -> list[tuple[ShardSpec, list[VideoEntry]]]:
    """Shards of at most ``shard_size`` videos, per split, in sorted video-id order.

    Ids come from the dataset (never list positions), so the same dataset always yields the same
    shards; a changed video list changes only the shards whose membership changed, and the
    marker check re-extracts exactly those.
    """
    if shard_size < 1:
        raise ValueError(f"store.shard_size must be >= 1, got {shard_size}")
    dupes = [vid for vid, n in Counter(v.video_id for v in index.videos).items() if n > 1]
    if dupes:
        raise ValueError(f"dataset {index.name!r} lists these video ids more than once: {dupes[:10]}")
    splits = sorted({v.split for v in index.videos}, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    shards = []
    for split in splits:
        videos = sorted((v for v in index.videos if v.split == split), key=lambda v: v.video_id)
        for k in range(0, len(videos), shard_size):
            chunk = videos[k : k + shard_size]
            spec = ShardSpec(f"{split}-{k // shard_size:05d}", split, tuple(v.video_id for v in chunk))
            shards.append((spec, chunk))
    return shards
