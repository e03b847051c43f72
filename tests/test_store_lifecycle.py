"""The store never loses finished work: a stable shard manifest, one writer at a time (a lease
with a heartbeat), shards extended in place (a modality added, failed videos redone) without a
moment in which the finished shard is missing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.schema import DatasetIndex, VideoEntry
from core.store import LOCK, MANIFEST, FeatureStore, ShardSpec, read_marker
from pipeline.lease import StoreBusyError, StoreLease
from pipeline.manifest import plan_shards, read_manifest
from pipeline.store import REPLACED, init_store, load_base, recover_replaced, write_shard

ROOT = Path(__file__).resolve().parents[1]
HASHES = {"rgb": "hr", "audio": "ha"}


def demo_like(n: int, *, extra: list[str] = ()) -> DatasetIndex:
    """`n` videos split like the demo (70% train, 15% val, 15% test), plus named extras in train."""
    split = lambda i: "train" if i < 0.7 * n else "val" if i < 0.85 * n else "test"  # noqa: E731
    videos = [VideoEntry(f"demo_{i:04d}", f"/v/{i}.mp4", split(i)) for i in range(n)]
    videos += [VideoEntry(v, f"/v/{v}.mp4", "train") for v in extra]
    return DatasetIndex("demo", videos, {})


# ---------------------------------------------------------------------- the manifest


def test_adding_one_video_to_the_120_video_demo_plans_one_new_shard_and_keeps_every_other(tmp_path):
    first, _, added = plan_shards(tmp_path, demo_like(120), 8)
    assert len(added) == len(first) == 17 and {s.split for s in added} == {"train", "val", "test"}
    before = (tmp_path / MANIFEST).read_text()
    again, _, added = plan_shards(tmp_path, demo_like(120, extra=["demo_0005b"]), 8)
    assert [s.shard_id for s in added] == ["train-00011"]  # one new shard, numbered after the split's last
    assert added[0].video_ids == ("demo_0005b",)
    assert (tmp_path / MANIFEST).read_text().startswith(before)  # append-only
    assert [s for s, _ in again if s != added[0]] == [s for s, _ in first]  # every other shard as it was


def test_another_shard_size_or_another_batch_leaves_planned_shards_alone(tmp_path):
    batch1 = DatasetIndex("d", [VideoEntry(f"a{i}", "", "train") for i in range(5)], {})
    batch2 = DatasetIndex("d", [VideoEntry(f"b{i}", "", "train") for i in range(3)], {})
    shards1, _, _ = plan_shards(tmp_path, batch1, 2)
    shards2, _, added = plan_shards(tmp_path, batch2, 4)  # DATA=/batch2, another shard_size
    assert [s.shard_id for s, _ in shards2] == [s.shard_id for s in added] == ["train-00003"]
    assert {s.video_ids for s in read_manifest(tmp_path)} == {("a0", "a1"), ("a2", "a3"), ("a4",), ("b0", "b1", "b2")}
    both = DatasetIndex("d", batch1.videos + batch2.videos, {})
    shards, foreign, added = plan_shards(tmp_path, both, 1)
    assert added == [] and foreign == [] and len(shards) == 4
    # a batch that lists part of a shard sees it (as waiting) but never splits it
    part, foreign, _ = plan_shards(tmp_path, DatasetIndex("d", batch1.videos[:1], {}), 8)
    assert [s.video_ids for s, _ in part] == [("a0", "a1")] and [s.video_ids for s in foreign] == [("a0", "a1")]


def test_a_torn_last_manifest_line_is_ignored_and_a_damaged_one_is_named(tmp_path):
    plan_shards(tmp_path, demo_like(10), 4)
    path = tmp_path / MANIFEST
    path.write_text(path.read_text() + '{"shard_id": "train-0')  # a crash mid-append
    assert len(read_manifest(tmp_path)) == 4
    path.write_text('not json\n' + path.read_text())
    with pytest.raises(ValueError, match="line 1 is not a shard record"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------------- the lease


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    with StoreLease(tmp_path):
        held = json.loads((tmp_path / LOCK).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(StoreBusyError, match=f"pid {os.getpid()}.*another OUT"):
            StoreLease(tmp_path).acquire()
    assert not (tmp_path / LOCK).exists()  # released


def test_the_heartbeat_renews_the_lease(tmp_path):
    with StoreLease(tmp_path, stale_s=2):
        first = json.loads((tmp_path / LOCK).read_text())["heartbeat"]
        time.sleep(1.5)
        assert json.loads((tmp_path / LOCK).read_text())["heartbeat"] > first


def test_stale_leases_are_taken_over_and_live_ones_are_not(tmp_path):
    lock = tmp_path / LOCK
    lock.write_text(json.dumps({"host": "node7", "pid": 1, "run": "old", "heartbeat": time.time() - 600}))
    with StoreLease(tmp_path, stale_s=120) as lease:  # a crashed node: no heartbeat for 10 min
        assert json.loads(lock.read_text())["run"] == lease.me["run"]
    lock.write_text(json.dumps({"host": "node7", "pid": 1, "run": "live", "heartbeat": time.time()}))
    with pytest.raises(StoreBusyError, match="host node7"):
        StoreLease(tmp_path, stale_s=120).acquire()


def test_a_killed_writer_process_loses_its_lease_to_the_next_run(tmp_path):
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    holder = subprocess.Popen([sys.executable, "-c", f"import faults; faults.hold_lease({str(tmp_path)!r}, "
                               f"{str(ready)!r})"], env=env)
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.1)
        with pytest.raises(StoreBusyError, match=f"pid {holder.pid}"):
            StoreLease(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with StoreLease(tmp_path) as lease:  # same host, pid gone: taken over at once
            assert json.loads((tmp_path / LOCK).read_text())["run"] == lease.me["run"]
    finally:
        holder.kill()


# ---------------------------------------------------------------------- extending a shard in place


def payload_video(vid, *, seed, keys=("rgb",), failed=None, errors=()):
    rng = np.random.default_rng(seed)
    shapes = {"rgb": (4, 5, 6), "audio": (2, 3, 4)}
    return {"video_id": vid, "failed": failed, "errors": list(errors), "frame_indices": np.arange(4),
            "timestamps": np.arange(4) * 0.5, "fps": 8.0, "num_frames": 16, "decoder": "decord", "size": [8, 8],
            "features": {k: rng.random(shapes[k]).astype(np.float16) for k in keys}, "model_meta": {}}


@pytest.fixture
def base(tmp_path):
    root = tmp_path / "s"
    init_store(root, dataset="s", hashes={"rgb": "hr"})
    spec = ShardSpec("train-00000", "train", ("a", "b", "c"))
    videos = [payload_video("a", seed=1), payload_video("b", seed=2, failed={"stage": "decode", "reason": "bad"}),
              payload_video("c", seed=3, errors=[{"stage": "encoder", "reason": "x"}])]
    write_shard(root, spec, videos, hashes={"rgb": "hr"})
    return root, spec


def test_adding_a_modality_keeps_the_shards_bytes_and_its_failures(base):
    root, spec = base
    shard = root / spec.relpath()
    rgb_before = {f: f.read_bytes() for f in (shard / "rgb").rglob("*") if f.is_file()}
    new = [payload_video("a", seed=9, keys=("audio",)), {**payload_video("b", seed=0, keys=()), "carry": True},
           payload_video("c", seed=8, keys=("audio",))]
    init_store(root, dataset="s", hashes=HASHES)
    hashes = load_base(shard, new, pass_keys={"audio"}, pass_stages={"decode", "audio"})
    marker = write_shard(root, spec, new, hashes={**hashes, "audio": "ha"})
    assert marker["hashes"] == HASHES and marker["ok"] == ["a", "c"]
    assert [f["video_id"] for f in marker["failed"]] == ["b"]  # still failed, still listed
    assert [(e["video_id"], e["stage"]) for e in marker["errors"]] == [("c", "encoder")]  # an error of a stage not run
    assert {f: f.read_bytes() for f in (shard / "rgb").rglob("*") if f.is_file()} == rgb_before
    fs = FeatureStore(root, expected_hashes=HASHES)
    np.testing.assert_array_equal(fs.get("a", "audio"), new[0]["features"]["audio"])
    assert fs.has("c", "audio") and fs.has("c", "rgb")


def test_a_video_this_pass_could_not_redo_keeps_what_the_shard_held(base):
    root, spec = base
    shard = root / spec.relpath()
    old = FeatureStore(root).get("a", "rgb")
    new = [payload_video("a", seed=9, keys=(), failed={"stage": "decode", "reason": "file not found"}),
           {**payload_video("b", seed=0, keys=()), "carry": True}, payload_video("c", seed=8, keys=("audio",))]
    load_base(shard, new, pass_keys={"audio"}, pass_stages={"decode", "audio"})
    init_store(root, dataset="s", hashes=HASHES)
    marker = write_shard(root, spec, new, hashes=HASHES)
    assert marker["ok"] == ["a", "c"]
    assert any(e["video_id"] == "a" and "file not found" in e["reason"] for e in marker["errors"])
    fs = FeatureStore(root)
    np.testing.assert_array_equal(fs.get("a", "rgb"), old)
    assert not fs.has("a", "audio")


def test_a_crash_between_the_two_renames_loses_nothing(base):
    root, spec = base
    shard = root / spec.relpath()
    aside = shard.with_name(f"{shard.name}{REPLACED}dead0001")
    shard.rename(aside)  # the writer died after moving the old shard aside, before the new one arrived
    assert FeatureStore(root).video_ids == []
    assert recover_replaced(root) == 1
    assert FeatureStore(root).video_ids == ["a", "c"] and read_marker(shard)["ok"] == ["a", "c"]
    aside.mkdir()  # an aside copy whose replacement made it: deleted
    assert recover_replaced(root) == 0 and not aside.exists()


# ---------------------------------------------------------------------- repairs keep every valid modality (issue 20 case 5)


def _flip(shard: Path, key: str) -> None:
    path = next(p for p in (shard / key / "c").rglob("*") if p.is_file())
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def two_modalities(tmp_path):
    root = tmp_path / "s"
    init_store(root, dataset="s", hashes=HASHES)
    spec = ShardSpec("train-00000", "train", ("a", "b"))
    write_shard(root, spec, [payload_video(v, seed=i, keys=("rgb", "audio")) for i, v in enumerate(spec.video_ids)],
                hashes=HASHES)
    return root, spec


def test_repairing_one_modality_carries_the_other_over(two_modalities):
    root, spec = two_modalities
    shard = root / spec.relpath()
    audio = {v: FeatureStore(root).get(v, "audio") for v in spec.video_ids}
    _flip(shard, "rgb")
    redo = [payload_video(v, seed=10 + i) for i, v in enumerate(spec.video_ids)]  # this pass: rgb only
    hashes = load_base(shard, redo, pass_keys={"rgb"}, pass_stages={"decode", "encoder"})
    marker = write_shard(root, spec, redo, hashes={**hashes, "rgb": "hr"})
    assert sorted(marker["hashes"]) == ["audio", "rgb"]  # today's main (no base for a corrupt shard): ['rgb']
    fs = FeatureStore(root, expected_hashes=HASHES)
    for v in spec.video_ids:
        np.testing.assert_array_equal(fs.get(v, "audio"), audio[v])


def test_a_damaged_modality_this_pass_does_not_redo_is_listed_not_kept(two_modalities):
    root, spec = two_modalities
    shard = root / spec.relpath()
    _flip(shard, "audio")
    redo = [payload_video(v, seed=10 + i) for i, v in enumerate(spec.video_ids)]
    hashes = load_base(shard, redo, pass_keys={"rgb"}, pass_stages={"decode", "encoder"})
    assert hashes == {"rgb": "hr"}  # the damaged audio is not vouched for
    marker = write_shard(root, spec, redo, hashes={**hashes, "rgb": "hr"})
    lost = [(e["video_id"], e["stage"], e["modality"]) for e in marker["errors"]]
    assert lost == [("a", "store", "audio"), ("b", "store", "audio")] and "audio" not in marker["present"]
    again = [payload_video(v, seed=20 + i, keys=("audio",)) for i, v in enumerate(spec.video_ids)]
    load_base(shard, again, pass_keys={"audio"}, pass_stages={"decode", "audio"})
    assert write_shard(root, spec, again, hashes=HASHES)["errors"] == []  # adding it again clears the rows


def test_a_corrupt_shard_is_planned_as_a_repair_over_its_own_base(two_modalities):
    from pipeline.extract import plan_work

    root, spec = two_modalities
    _flip(root / spec.relpath(), "rgb")
    entries = [VideoEntry(v, f"/x/{v}.mp4", "train") for v in spec.video_ids]
    work = plan_work(root, [(spec, entries)], HASHES, ["rgb"], retry_failed=False, verify=True)
    assert [(s, base, carry) for s, _, base, carry in work.full] == [(spec, root / spec.relpath(), set())]
    assert dict(work.reasons) == {"repair": 1}  # today's main: a new shard without base (its audio lost)


def test_a_changed_source_is_planned_again_and_a_copied_one_is_not(tmp_path):
    from pipeline.extract import plan_work

    root = tmp_path / "s"
    init_store(root, dataset="s", hashes=HASHES)
    src = {v: tmp_path / f"{v}.mp4" for v in ("a", "b")}
    for v, path in src.items():
        path.write_bytes(v.encode() * 1000)
    spec = ShardSpec("train-00000", "train", ("a", "b"))
    write_shard(root, spec, [{**payload_video(v, seed=i, keys=("rgb", "audio")), "path": str(src[v])}
                             for i, v in enumerate(spec.video_ids)], hashes=HASHES)
    entries = [VideoEntry(v, str(src[v]), "train") for v in spec.video_ids]
    assert plan_work(root, [(spec, entries)], HASHES, ["rgb"], retry_failed=False, verify=False).done == 1
    src["a"].write_bytes(b"another file" * 100)  # another file at a's path
    src["b"].write_bytes(src["b"].read_bytes())  # b rewritten with the same bytes (a new mtime)
    work = plan_work(root, [(spec, entries)], HASHES, ["rgb"], retry_failed=False, verify=False)
    assert work.changed == ["a"] and [carry for *_, carry in work.full] == [{"b"}]  # today's main: done, "valid"
    redo = [{**payload_video("a", seed=7), "path": str(src["a"])}, {**payload_video("b", seed=0), "carry": True}]
    load_base(root / spec.relpath(), redo, pass_keys={"rgb"}, pass_stages={"decode", "encoder"})
    assert "audio" not in redo[0]["features"] and redo[0]["errors"][0]["modality"] == "audio"
    assert "audio" in redo[1]["features"]
