import pytest

from pipeline.manifest import build_manifest
from core.schema import DatasetIndex, VideoEntry, safe_video_id


def index(ids_by_split):
    return DatasetIndex("t", [VideoEntry(v, f"/x/{v}.mp4", s) for s, ids in ids_by_split.items() for v in ids], {})


def test_shards_are_per_split_sorted_and_stable():
    shards = build_manifest(index({"test": ["t1"], "train": ["b", "a", "c"], "val": ["v"]}), 2)
    assert [(s.shard_id, s.video_ids) for s, _ in shards] == [
        ("train-00000", ("a", "b")), ("train-00001", ("c",)), ("val-00000", ("v",)), ("test-00000", ("t1",))]
    # the same videos in another order give the same manifest
    again = build_manifest(index({"val": ["v"], "train": ["c", "a", "b"], "test": ["t1"]}), 2)
    assert [s for s, _ in again] == [s for s, _ in shards]


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="more than once"):
        build_manifest(index({"train": ["a", "a"]}), 2)


def test_safe_video_id_is_deterministic_and_collision_free():
    assert safe_video_id("demo_0001") == "demo_0001"
    a, b = safe_video_id("cats/video 1.mp4"), safe_video_id("cats/video_1.mp4")
    assert a != b and a == safe_video_id("cats/video 1.mp4") and "/" not in a
