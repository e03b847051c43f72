"""The store across runs, through the real CLI and a real local Ray (slow): two batches into one
OUT keep both, a modality added later is extracted alone and leaves the others' bytes, a
transient failure is redone by the next run by itself, a permanent one only with
store.retry_failed=true, and a second writer is refused while the first holds the store."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.store import LOCK, FeatureStore, read_marker
from media import write_video

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    """The CLI's environment, read at call time (RAY_ADDRESS of the session's Ray, tests/conftest.py)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def extract(folder: Path, out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts/extract.py"), "dataset=videos", f"dataset.path={folder}", f"out={out}",
           "ray.num_cpus=2", "features.decode.num_frames_stored=4", "store.shard_size=1", "max_failed_fraction=0.9",
           "+features.decode.decoder=faults:flaky_decode", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env())
    if check and proc.returncode != 0:
        raise AssertionError(f"extract failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def shard_bytes(root: Path, vid: str) -> dict[str, bytes]:
    """Every file of the shard that holds `vid` (marker included), by path inside the shard."""
    (shard,) = [m.parent for m in root.glob("*/*.zarr/_SUCCESS.json") if vid in read_marker(m.parent)["video_ids"]]
    return {str(p.relative_to(shard)): p.read_bytes() for p in sorted(shard.rglob("*")) if p.is_file()}


def shard_of(root: Path, vid: str) -> Path:
    (shard,) = [m.parent for m in root.glob("*/*.zarr/_SUCCESS.json") if read_marker(m.parent)["video_ids"] == [vid]]
    return shard


def report(root: Path) -> dict:
    return json.loads((root / "report.json").read_text())


def failures(root: Path) -> dict[str, dict]:
    return {r["video_id"]: r for r in map(json.loads, (root / "failures.jsonl").read_text().splitlines())}


def test_batches_added_modalities_and_retries_never_lose_finished_work(tmp_path):
    b1, b2, out = tmp_path / "batch1", tmp_path / "batch2", tmp_path / "out"
    for d in (b1, b2):
        d.mkdir()
    write_video(b1 / "good_a.mp4")
    write_video(b1 / "flaky.mp4", step=3)
    (b1 / "flaky.mp4.fail").write_text("")  # EIO while this exists (tests/faults.py)
    (b1 / "list.txt").write_text("good_a.mp4\nflaky.mp4\nlate.mp4\n")  # late.mp4 is not there yet
    write_video(b2 / "good_b.mp4", step=4)
    root = out / "videos"

    # 1. batch 1, rgb only: a transient failure (EIO) and a permanent one (file not found)
    extract(b1 / "list.txt", out, "features.modalities=[rgb]")
    rows = failures(root)
    assert rows["flaky.mp4"].get("transient") is True and "Input/output error" in rows["flaky.mp4"]["reason"]
    assert "transient" not in rows["late.mp4"] and "not found" in rows["late.mp4"]["reason"]
    good_a = shard_bytes(root, "good_a.mp4")

    # 2. batch 2 into the same OUT: added, batch 1 untouched
    extract(b2, out, "features.modalities=[rgb]")
    assert FeatureStore(root).video_ids == ["good_a.mp4", "good_b.mp4"]
    assert report(root)["run"]["shards_written"] == 1 and report(root)["store_shards"] == 4
    assert shard_bytes(root, "good_a.mp4") == good_a

    # 3. batch 1 again with audio added; the EIO is gone, late.mp4 appeared
    (b1 / "flaky.mp4.fail").unlink()
    write_video(b1 / "late.mp4", step=5)
    extract(b1 / "list.txt", out, "features.modalities=[rgb,audio]")
    run = report(root)["run"]
    # good_a gets audio added; flaky is redone with both; late.mp4 is not retried without the flag
    assert run["work"] == {"add audio": 1, "retry + add": 1}
    assert run["videos_decoded"] == 2  # good_a for its audio, flaky redone
    assert "encoder" not in run["stage_seconds"] or run["stage_seconds"].keys() >= {"encoder", "audio"}
    fs = FeatureStore(root)
    assert fs.video_ids == ["flaky.mp4", "good_a.mp4", "good_b.mp4"]
    assert fs.has("good_a.mp4", "audio") and fs.has("flaky.mp4", "audio") and not fs.has("good_b.mp4", "audio")
    assert {k: v for k, v in shard_bytes(root, "good_a.mp4").items() if k.startswith("rgb")} == \
        {k: v for k, v in good_a.items() if k.startswith("rgb")}  # rgb bytes as they were
    assert set(failures(root)) == {"late.mp4"}

    # 4. store.retry_failed=true redoes the permanent failure
    extract(b1 / "list.txt", out, "features.modalities=[rgb,audio]", "store.retry_failed=true")
    assert report(root)["run"]["work"] == {"retry + add": 1} and report(root)["videos_ok"] == 3
    assert not (root / "failures.jsonl").read_text().strip()

    # the same features as one clean run over all four videos at once
    everything = tmp_path / "all"
    everything.mkdir()
    for p in [*b1.glob("*.mp4"), *b2.glob("*.mp4")]:
        shutil.copy(p, everything / p.name)
    extract(everything, tmp_path / "clean", "features.modalities=[rgb,audio]")
    clean, fs = FeatureStore(tmp_path / "clean" / "videos"), FeatureStore(root)
    for vid in ["flaky.mp4", "good_a.mp4", "late.mp4"]:
        for m in ("rgb", "audio", "frame_indices"):
            np.testing.assert_array_equal(fs.get(vid, m), clean.get(vid, m), err_msg=f"{vid} {m}")
    np.testing.assert_array_equal(fs.get("good_b.mp4", "rgb"), clean.get("good_b.mp4", "rgb"))


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path):
    """Also issue 20 case 9: the video has a 255-character name (its id, with a hash suffix, is
    longer than a file name may be) and the run after the takeover stores raw maps, which aborted
    every run with `OSError: File name too long`."""
    folder, out = tmp_path / "v", tmp_path / "out"
    folder.mkdir()
    name = ("a long name " * 30)[:251] + ".mp4"
    write_video(folder / name)
    (out / "videos").mkdir(parents=True)
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", f"import faults; faults.hold_lease("
                               f"{str(out / 'videos')!r}, {str(ready)!r})"], env={**env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    try:
        deadline = time.monotonic() + 180  # the holder imports the project first: slow on a busy machine
        while not ready.exists():  # without its lease held, the refusal below tests nothing
            assert holder.poll() is None and time.monotonic() < deadline, "the lease holder did not start"
            time.sleep(0.1)
        proc = extract(folder, out, "features.modalities=[rgb]", check=False)
        assert proc.returncode != 0
        assert "being written by another run" in proc.stderr and f"pid {holder.pid}" in proc.stderr
        assert not list((out / "videos").glob("*/*.zarr"))  # refused before touching the store
        holder.send_signal(signal.SIGKILL)  # not reaped: a zombie while the next run starts
        # the dead holder's lease is taken over at once; raw maps of the long name are stored
        extract(folder, out, "features.modalities=[depth]", "store.raw_maps=true")
        fs = FeatureStore(out / "videos")
        (vid,) = fs.video_ids
        assert vid.startswith("a_long_name") and fs.raw_map(vid, "depth").ndim == 3
        assert not (out / "videos" / LOCK).exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_colliding_names_changed_sources_repairs_and_decode_settings(tmp_path):
    """Issue 20 cases 1, 2, 5 and 6 through the CLI: two real runs with Ray, one refused before it."""
    from core.provenance import fingerprint

    b1, b2, out = tmp_path / "batch1", tmp_path / "batch2", tmp_path / "out"
    for d in (b1, b2):
        d.mkdir()
    write_video(b1 / "a.mp4")
    write_video(b1 / " a.mp4", step=4)  # differs from a.mp4 by a leading space only
    write_video(b1 / "c.mp4", step=3)
    root = out / "videos"

    # case 1: three files, three videos (today's main: 2, one file dropped without a word)
    extract(b1, out, "features.modalities=[rgb,audio]")
    fs = FeatureStore(root)
    assert len(fs) == 3 and "a.mp4" in fs and "c.mp4" in fs
    (spaced,) = [v for v in fs.video_ids if v not in ("a.mp4", "c.mp4")]
    assert not np.array_equal(fs.get(spaced, "rgb"), fs.get("a.mp4", "rgb"))
    old_a = fs.get("a.mp4", "rgb")
    c_audio = {k: v for k, v in shard_bytes(root, "c.mp4").items() if k.startswith("audio/")}

    # batch 2: another file at a's path (case 2), c.mp4 copied (new mtime, same bytes: not a change)
    write_video(b2 / "a.mp4", step=5)
    shutil.copy(b1 / "c.mp4", b2 / "c.mp4")
    # case 5: a flipped byte in c's rgb chunk, then a repair that computes rgb only
    c_shard, a_shard = shard_of(root, "c.mp4"), shard_of(root, "a.mp4")
    (chunk,) = [p for p in (c_shard / "rgb" / "c").rglob("*") if p.is_file()]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    proc = extract(b2, out, "features.modalities=[rgb]", "store.verify=true")
    run = report(root)["run"]
    assert run["sources_changed"] == ["a.mp4"] and run["work"] == {"retry": 1, "repair": 1}, run
    assert "0 already valid" in proc.stdout  # today's main: "1 already valid", batch 1's features kept
    fs = FeatureStore(root)
    assert not np.array_equal(fs.get("a.mp4", "rgb"), old_a)
    recorded = read_marker(a_shard)["sources"]["a.mp4"]["video"]
    assert recorded["fingerprint"] == fingerprint(b2 / "a.mp4")["fingerprint"] and recorded["path"] == str(b2 / "a.mp4")
    assert not fs.has("a.mp4", "audio")  # the old file's audio is not passed off as the new one's
    assert failures(root)["a.mp4"]["modality"] == "audio" and "source changed" in failures(root)["a.mp4"]["reason"]
    # the repaired shard keeps its audio, byte for byte (today's main: hashes ['rgb'], audio gone)
    assert fs.has("c.mp4", "audio") and sorted(read_marker(c_shard)["hashes"]) == ["audio", "rgb"]
    assert {k: v for k, v in shard_bytes(root, "c.mp4").items() if k.startswith("audio/")} == c_audio
    fs.get("c.mp4", "rgb")  # reads clean again

    # case 6: normal decoded at another size joins nothing: refused before Ray starts, store untouched
    meta = (root / "store.json").read_text()
    proc = extract(b2, out, "features.modalities=[normal]", "features.decode.max_side=32", check=False)
    assert proc.returncode != 0 and "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "normal: store decode {max_side: 256}" in proc.stderr and "this run decode {max_side: 32}" in proc.stderr
    assert (root / "store.json").read_text() == meta


def test_a_run_that_loses_its_lease_stops_its_writers(tmp_path):
    """Issue 20 case 3: losing the lease stopped nothing (only the driver looked, once per shard,
    while the Ray writers went on). Here another run takes the store over mid-run (as a run on
    another host does after a takeover): no shard is swapped in after that, the run stops with an
    `error:` line and leaves the new holder's lease alone."""
    from core.util import write_json_atomic
    from pipeline.lease import store_fence

    folder, out = tmp_path / "v", tmp_path / "out"
    folder.mkdir()
    for i in range(4):
        write_video(folder / f"v{i}.mp4", step=2 + i)
    root = out / "videos"
    cmd = [sys.executable, str(ROOT / "scripts/extract.py"), "dataset=videos", f"dataset.path={folder}", f"out={out}",
           "ray.num_cpus=2", "features.decode.num_frames_stored=4", "store.shard_size=1",
           "features.modalities=[rgb]", "+features.decode.decoder=faults:slow_decode"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.time() + 300
        while not list(root.glob("*/*.zarr/_SUCCESS.json")):
            assert time.time() < deadline and proc.poll() is None, "no shard was written"
            time.sleep(0.05)
        thief = {"host": "node-remote", "pid": 1, "run": "thief", "token": "t", "beat": 0, "heartbeat": time.time()}
        with store_fence(root):  # no shard can be swapped in while the lease changes hands
            write_json_atomic(root / LOCK, thief)
            done = sorted(p.parent.name for p in root.glob("*/*.zarr/_SUCCESS.json"))
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert len(done) < 4 and sorted(p.parent.name for p in root.glob("*/*.zarr/_SUCCESS.json")) == done
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "held by run thief" in errors[0], stderr[-3000:]
    assert json.loads((root / LOCK).read_text())["run"] == "thief" and not list(root.glob("*/.tmp-*"))
