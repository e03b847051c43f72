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
    # Polled, not one look after a fixed sleep: on a busy machine the beat thread (every 0.5 s)
    # can be late by more than the margin a fixed sleep leaves; a lease that never renews still fails.
    with StoreLease(tmp_path, stale_s=2):
        first = json.loads((tmp_path / LOCK).read_text())["heartbeat"]
        deadline = time.monotonic() + 60
        while json.loads((tmp_path / LOCK).read_text())["heartbeat"] <= first:
            assert time.monotonic() < deadline, "the lease was not renewed within 60 s (every 0.5 s expected)"
            time.sleep(0.05)


def spawn(code: str) -> subprocess.Popen:
    """A real Python process running `code` with the project and tests/ importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def wait_for(path: Path, timeout: float = 180) -> None:
    """Until `path` exists: a spawned helper imports the project first (seconds idle, far more on a busy machine)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_remote_holder_is_judged_by_this_runs_clock_not_by_its_own(tmp_path):
    """Issue 20 case 3: a live holder whose clock is far behind was taken over; a dead one whose
    clock was ahead blocked takeover ("heartbeat -599 s ago")."""
    ready = tmp_path / "ready"
    holder = spawn(f"import faults; faults.remote_holder({str(tmp_path)!r}, {str(ready)!r}, skew_s=-10_000)")
    try:
        wait_for(ready)
        # refused as soon as its heartbeat moves (every 0.1 s); stale_s=30 so that a holder stalled
        # for a second by a busy machine (or a slow fsync) is not taken for dead
        with pytest.raises(StoreBusyError, match="host node-remote.*heartbeat moved"):
            StoreLease(tmp_path, stale_s=30).acquire()  # 10000 s "old" by its stamp, but alive
    finally:
        holder.kill()
        holder.wait()
    lock = tmp_path / LOCK
    lock.write_text(json.dumps({"host": "node-remote", "pid": 1, "run": "dead", "beat": 7,
                                "heartbeat": time.time() + 600}))  # a dead node whose clock ran ahead
    t0 = time.monotonic()
    with StoreLease(tmp_path, stale_s=1) as lease:
        assert json.loads(lock.read_text())["run"] == lease.run
    assert time.monotonic() - t0 >= 1  # watched for stale_s of this run's own clock first


def test_a_killed_writer_still_a_zombie_loses_its_lease_at_once(tmp_path):
    """Issue 20 case 3: after kill -9 the dead driver stays a zombie until reaped; os.kill(pid, 0)
    calls it alive and an immediate re-run was refused. Here the holder is killed and not reaped."""
    ready = tmp_path / "ready"
    holder = spawn(f"import faults; faults.hold_lease({str(tmp_path)!r}, {str(ready)!r})")
    try:
        wait_for(ready)
        with pytest.raises(StoreBusyError, match=f"pid {holder.pid}"):
            StoreLease(tmp_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while Path(f"/proc/{holder.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(holder.pid, 0)  # a zombie: the signal probe still says "alive"
        with StoreLease(tmp_path) as lease:  # same host, pid a zombie: taken over at once
            assert json.loads((tmp_path / LOCK).read_text())["run"] == lease.run
    finally:
        holder.kill()
        holder.wait()


def test_simultaneous_acquires_never_both_hold(tmp_path):
    """Issue 20 case 3: two runs starting in the same instant both took the lease (4 of 300
    pairs): one read the other's lease file before its content was written."""
    import multiprocessing as mp

    import faults

    ctx, rounds, racers = mp.get_context("spawn"), 300, 2
    barrier, results = ctx.Barrier(racers), ctx.Queue()
    procs = [ctx.Process(target=faults.race_acquire, args=(str(tmp_path), rounds, barrier, results))
             for _ in range(racers)]
    for p in procs:
        p.start()
    won = [0] * rounds
    for _ in range(rounds * racers):
        i, ok = results.get(timeout=120)
        won[i] += ok
    for p in procs:
        p.join(timeout=60)
    assert [n for n in won if n != 1] == [], f"rounds with {sorted(set(won))} holders"


def test_writers_of_a_run_that_lost_the_lease_change_nothing(tmp_path):
    """Issue 20 case 3: losing the lease stopped only the driver; Ray writers of the old run went
    on writing. The writer checks the lease generation, and swaps a shard in only under the fence."""
    from pipeline.graph import ShardWriterStage
    from pipeline.lease import LeaseLostError, fenced
    from pipeline.manifest import append_manifest

    init_store(tmp_path, dataset="s", hashes={"rgb": "hr"})
    spec = ShardSpec("train-00000", "train", ("a",))
    write_shard(tmp_path, spec, [payload_video("a", seed=1)], hashes={"rgb": "hr"})
    before = {p: p.read_bytes() for p in sorted((tmp_path / spec.relpath()).rglob("*")) if p.is_file()}
    old = StoreLease(tmp_path).acquire()
    old_token = old.new_generation()
    old._stop.set()
    (tmp_path / LOCK).unlink()  # the old run is gone (as if killed) and a new run takes the store
    with StoreLease(tmp_path) as new:
        with pytest.raises(LeaseLostError, match=old_token):  # the swap is refused, the temporary removed
            write_shard(tmp_path, spec, [payload_video("a", seed=2)], hashes={"rgb": "hr"},
                        fence=lambda: fenced(tmp_path, old_token))
        writer = ShardWriterStage(str(tmp_path), {"rgb": "hr"}, "auto", False, token=old_token)
        payload = {"shard_id": spec.shard_id, "split": "train", "timings": {}, "videos": [payload_video("a", seed=3)]}
        with pytest.raises(LeaseLostError):  # refused before it starts
            writer.write(payload)
        with pytest.raises(LeaseLostError):
            append_manifest(tmp_path, [ShardSpec("train-00001", "train", ("z",))],
                            fence=lambda: fenced(tmp_path, old_token))
        assert not (tmp_path / MANIFEST).exists()
        assert {p: p.read_bytes() for p in sorted((tmp_path / spec.relpath()).rglob("*")) if p.is_file()} == before
        writer.token = new.token  # the holder's own writer goes ahead
        writer.write(payload)
    assert not list(tmp_path.glob("*/.tmp-*"))
    np.testing.assert_array_equal(FeatureStore(tmp_path).get("a", "rgb"), payload["videos"][0]["features"]["rgb"])


def test_an_append_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path):
    """Issue 20 case 8: a torn last line was tolerated once, then the next append glued onto it
    and every later run stopped with "the manifest is damaged"."""
    plan_shards(tmp_path, demo_like(10), 4)
    path = tmp_path / MANIFEST
    path.write_text(path.read_text() + '{"shard_id": "train-0')  # a crash mid-append
    plan_shards(tmp_path, demo_like(10, extra=["late"]), 4)  # the next run appends a shard
    plan_shards(tmp_path, demo_like(10, extra=["late", "later"]), 4)  # and the one after
    assert [s.video_ids for s in read_manifest(tmp_path)][-2:] == [("late",), ("later",)]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    # a manifest an older version glued together is read, not refused
    record = path.read_text().splitlines()[-1]
    path.write_text('{"shard_id": "train-0' + record + "\n")
    assert [s.video_ids for s in read_manifest(tmp_path)] == [("later",)]


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


# ---------------------------------------------------------------------- the storage refusing a write


def test_a_real_enospc_inside_rays_wrappers_becomes_one_message_naming_the_path(tmp_path):
    """Issue 20 case 10, where no filesystem can be mounted: /dev/full raises a real ENOSPC."""
    from pipeline.errors import StorageError, storage_error

    try:
        with open("/dev/full", "w") as f:
            f.write("x")
            f.flush()
    except OSError as exc:
        enospc = exc
    wrapped = RuntimeError("a Ray task failed")  # as Ray Data re-raises a writer's error
    wrapped.__cause__ = enospc
    err = storage_error(wrapped, tmp_path)
    assert isinstance(err, StorageError)
    assert str(err).startswith(f"cannot write {tmp_path} (No space left on device, ")
    assert "free space there or write to another OUT" in str(err) and "resume" in str(err)
    assert storage_error(ValueError("not storage"), tmp_path) is None
    assert storage_error(ConnectionResetError(104, "reset"), tmp_path) is None  # an OSError, but not the storage's
