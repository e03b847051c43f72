import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.store import (MARKER, FeatureStore, ShardSpec, StoreError, StoreMismatchError, collect_markers,
                        read_marker, shard_is_valid, verify_shard)
from pipeline.store import init_store, remove_stale_temporaries, write_failures, write_shard

ROOT = Path(__file__).resolve().parents[1]
H1 = {"rgb": "h1", "audio": "ha"}  # a store's registry: one config hash per modality


def video(vid, *, audio=True, failed=None, seed=0):
    rng = np.random.default_rng(seed)
    v = {"video_id": vid, "failed": failed, "errors": [], "frames": np.zeros((4, 8, 8, 3), np.uint8),
         "frame_indices": np.arange(4) * 3, "timestamps": np.arange(4) * 0.3, "fps": 10.0, "num_frames": 12,
         "decoder": "decord", "maps": {"depth": rng.random((4, 8, 8), dtype=np.float32)},
         "features": {"rgb": rng.random((4, 5, 6)).astype(np.float16)}, "model_meta": {"rgb": {"model_id": "x"}}}
    if audio:
        v["features"]["audio"] = rng.random((2, 3, 4)).astype(np.float16)
    else:
        v["errors"].append({"stage": "audio", "reason": "no audio stream"})
    return v


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "demo"
    init_store(root, dataset="demo", hashes=H1, features={"rgb": {"k": 1}})
    videos = [video("a", seed=1), video("b", audio=False, seed=2), video("c", failed={"stage": "decode", "reason": "bad"})]
    spec = ShardSpec("train-00000", "train", ("a", "b", "c"))
    marker = write_shard(root, spec, videos, hashes=H1, store_raw_maps=True)
    return root, spec, videos, marker


def test_roundtrip_masks_and_metadata(store):
    root, spec, videos, marker = store
    fs = FeatureStore(root, expected_hashes=H1)
    assert fs.video_ids == ["a", "b"] and "c" not in fs  # a failed video gets no record
    np.testing.assert_array_equal(fs.get("a", "rgb"), videos[0]["features"]["rgb"])
    np.testing.assert_array_equal(fs.get("b", "rgb"), videos[1]["features"]["rgb"])
    assert fs.has("a", "audio") and not fs.has("b", "audio")
    with pytest.raises(KeyError, match="no 'audio' features"):
        fs.get("b", "audio")
    assert fs.read("b", ["rgb", "audio"])["audio"] is None
    meta = fs.meta("a")
    assert meta["frame_indices"].tolist() == [0, 3, 6, 9] and meta["decoder"] == "decord"
    assert meta["model_meta"]["rgb"]["model_id"] == "x"
    assert fs.modalities["rgb"] == {"shape": (4, 5, 6), "dtype": "float16"}
    np.testing.assert_allclose(fs.raw_map("a", "depth"), videos[0]["maps"]["depth"], atol=1e-3)
    assert marker["failed"] == [{"video_id": "c", "stage": "decode", "reason": "bad"}]
    with pytest.raises(KeyError, match="not in store"):
        fs.get("zzz", "rgb")


def test_arrays_are_zarr_v3_sharded_frame_modalities_one_chunk_per_frame(store):
    root, spec, videos, _ = store
    chunk_shape = {}
    for key in ("rgb", "audio"):
        meta = json.loads((root / spec.relpath() / key / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["codecs"][0]["name"] == "sharding_indexed"
        chunk_shape[key] = meta["codecs"][0]["configuration"]["chunk_shape"]
    # a frame modality: one chunk per frame of a video (a reader of T frames reads T chunks); a clip: per video
    assert chunk_shape == {"rgb": [1, 1, 5, 6], "audio": [1, 2, 3, 4]}
    fs = FeatureStore(root)
    frames = [3, 0, 0]  # any order, repeats allowed (the trainer's sampling)
    np.testing.assert_array_equal(fs.get("a", "rgb", frames=frames), videos[0]["features"]["rgb"][frames])


def test_marker_is_required_and_checked(store):
    root, spec, *_ = store
    shard = root / spec.relpath()
    assert shard_is_valid(shard, hashes=H1, video_ids=spec.video_ids)
    assert not shard_is_valid(shard, hashes={**H1, "audio": "h2"})  # one modality's hash differs
    assert not shard_is_valid(shard, hashes={"rgb": "h1"})  # a modality the registry does not know
    assert not shard_is_valid(shard, hashes=H1, video_ids=("a", "b"))
    marker = read_marker(shard)
    marker["arrays"]["rgb"]["shape"] = [3, 4, 5, 6]  # an array that does not match its marker
    (shard / MARKER).write_text(json.dumps(marker))
    assert not shard_is_valid(shard, hashes=H1)
    (shard / MARKER).unlink()  # no marker: invisible to readers
    assert not shard_is_valid(shard, hashes=H1)
    assert FeatureStore(root).video_ids == []


def test_interrupted_writer_leaves_only_temporaries(store, tmp_path, monkeypatch):
    root, spec, videos, _ = store
    import pipeline.store as st

    spec2 = ShardSpec("train-00001", "train", ("d",))

    def die(*a, **k):
        raise KeyboardInterrupt  # dies just before the marker: the shard must not appear

    monkeypatch.setattr(st, "write_json_atomic", die)
    with pytest.raises(KeyboardInterrupt):
        write_shard(root, spec2, [video("d")], hashes=H1)
    monkeypatch.undo()
    assert not (root / spec2.relpath()).exists()
    assert FeatureStore(root).video_ids == ["a", "b"]
    assert remove_stale_temporaries(root) == 1
    assert sorted(p.name for p in (root / "train").iterdir()) == ["train-00000.zarr"]


def test_rewrite_replaces_invalid_shard_and_keeps_ids(store):
    root, spec, videos, _ = store
    (root / spec.relpath() / MARKER).unlink()
    write_shard(root, spec, videos, hashes=H1)
    assert FeatureStore(root, H1).video_ids == ["a", "b"]


def test_mismatched_config_is_refused_naming_both_hashes(store):
    root, *_ = store
    with pytest.raises(StoreMismatchError, match="'audio' features made with config ha.*expects h9"):
        FeatureStore(root, expected_hashes={"rgb": "h1", "audio": "h9"})
    assert FeatureStore(root, expected_hashes={"rgb": "h1"}).video_ids == ["a", "b"]  # reads rgb only
    with pytest.raises(StoreError, match="no 'depth' features.*features.modalities=\\[audio,rgb,depth\\]"):
        FeatureStore(root, expected_hashes={"depth": "hd"})
    with pytest.raises(StoreMismatchError, match="audio: store ha, this run h9"):
        init_store(root, dataset="demo", hashes={"rgb": "h1", "audio": "h9"})
    # a new modality joins the registry; the shards stay valid
    assert init_store(root, dataset="demo", hashes={"rgb": "h1", "depth": "hd"}) == {**H1, "depth": "hd"}
    assert FeatureStore(root, expected_hashes=H1).video_ids == ["a", "b"]
    init_store(root, dataset="demo", hashes={"audio": "h9"}, overwrite=True)
    assert FeatureStore(root, {"audio": "h9"}).video_ids == []


def test_a_store_without_a_finished_shard_is_replaced_by_another_config(tmp_path):
    """A run that failed before its first shard (issue 27) must not block a run of another config."""
    root = tmp_path / "videos"
    init_store(root, dataset="videos", hashes={"rgb": "full", "audio": "full-a"})
    (root / "shards.jsonl").write_text('{"shard": "train-00000", "videos": ["a"]}\n')
    partial = root / "train" / ".tmp-train-00000-x"  # killed after its marker, before the rename
    partial.mkdir(parents=True)
    (partial / MARKER).write_text("{}")
    assert init_store(root, dataset="videos", hashes={"rgb": "tiny"}) == {"rgb": "tiny"}
    assert json.loads((root / "store.json").read_text())["modalities"].keys() == {"rgb"}
    assert not (root / "shards.jsonl").exists() and not partial.exists()
    # an old-format store without shards goes the same way
    meta = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**meta, "format": "crema-store/1"}))
    assert init_store(root, dataset="videos", hashes={"rgb": "tiny"}) == {"rgb": "tiny"}


def test_a_store_of_the_old_format_is_refused_with_what_to_do(store):
    root, *_ = store
    meta = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**meta, "format": "crema-store/1"}))
    with pytest.raises(StoreMismatchError, match="crema-store/1.*store.overwrite=true"):
        FeatureStore(root)
    with pytest.raises(StoreMismatchError, match="crema-store/1"):
        init_store(root, dataset="demo", hashes=H1)
    init_store(root, dataset="demo", hashes=H1, overwrite=True)
    assert FeatureStore(root).video_ids == []


def test_missing_store_says_how_to_make_it(tmp_path):
    with pytest.raises(StoreError, match="make extract DATASET=nope"):
        FeatureStore(tmp_path / "nope")


def test_failures_manifest_from_markers(store):
    root, *_ = store
    rows = write_failures(root, collect_markers(root, hashes=H1).values())
    assert [(r["video_id"], r["stage"], r["fatal"]) for r in rows] == [("b", "audio", False), ("c", "decode", True)]
    lines = (root / "failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["video_id"] for line in lines] == ["b", "c"]


def test_payload_must_match_manifest(tmp_path):
    root = tmp_path / "s"
    init_store(root, dataset="s", hashes={"rgb": "h"})
    with pytest.raises(ValueError, match="do not match the manifest"):
        write_shard(root, ShardSpec("train-00000", "train", ("x",)), [video("y")], hashes={"rgb": "h"})
    shutil.rmtree(root)


def _flip_a_byte(shard_dir, key: str) -> None:
    """One byte of an array's chunk data on disk, as a failing disk or a bad copy would."""
    chunk = max((p for p in (shard_dir / key).rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size)
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    chunk.write_bytes(bytes(blob))


@pytest.mark.parametrize("compression", ["auto", "none"])
def test_verify_finds_a_flipped_byte_and_the_verifying_reader_hides_the_shard(tmp_path, compression):
    root = tmp_path / "demo"
    init_store(root, dataset="demo", hashes=H1, features={"rgb": {"k": 1}})
    write_shard(root, ShardSpec("train-00000", "train", ("a",)), [video("a", seed=1)], hashes=H1,
                compression=compression)
    write_shard(root, ShardSpec("train-00001", "train", ("b",)), [video("b", seed=2)], hashes=H1,
                compression=compression)
    good, bad = root / "train" / "train-00000.zarr", root / "train" / "train-00001.zarr"
    assert verify_shard(good) == verify_shard(bad) == []
    _flip_a_byte(bad, "rgb")
    problems = verify_shard(bad)
    assert len(problems) == 1 and problems[0].startswith("rgb: ")  # a checksum or a decode error
    assert verify_shard(good) == []
    assert FeatureStore(root).video_ids == ["a", "b"]  # the marker alone still vouches for it
    assert FeatureStore(root, verify=True).video_ids == ["a"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify.py"), "dataset=demo",
                           f"store={root}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "CORRUPT train/train-00001.zarr: rgb:" in proc.stdout
    assert "1/2 shards verify" in proc.stdout


# ----------------------------------------------------------------------------- issue 20: reads that cannot be fooled


def _chunk_file(root: Path, spec: ShardSpec, key: str) -> Path:
    files = [p for p in (root / spec.relpath() / key / "c").rglob("*") if p.is_file()]
    assert len(files) == 1  # one Zarr shard file per array
    return files[0]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.8, 0.999])
def test_a_flipped_byte_in_a_chunk_is_an_error_on_read_never_other_values(store, fraction):
    root, spec, videos, _ = store
    path = _chunk_file(root, spec, "rgb")
    data = bytearray(path.read_bytes())
    data[int(fraction * (len(data) - 1))] ^= 0x10
    path.write_bytes(bytes(data))
    fs = FeatureStore(root, expected_hashes=H1)
    errors = 0
    for v in videos[:2]:
        try:
            got = fs.get(v["video_id"], "rgb")
        except StoreError as exc:
            assert "make verify" in str(exc) and "rgb" in str(exc)
            errors += 1
            continue
        np.testing.assert_array_equal(got, v["features"]["rgb"])  # today's main: other values, no error
    assert errors >= 1  # every byte of the file belongs to a checksummed chunk or to the checksummed index


def test_a_deleted_chunk_file_is_an_error_not_zeros(store):
    root, spec, *_ = store
    _chunk_file(root, spec, "rgb").unlink()
    fs = FeatureStore(root, expected_hashes=H1)
    with pytest.raises(StoreError, match="is missing"):
        fs.get("a", "rgb")  # today's main: zeros
    assert "rgb" in verify_shard(root / spec.relpath())[0]


def test_chunks_carry_a_crc32c(store):
    root, spec, *_ = store
    from core.store import has_chunk_checksums

    assert has_chunk_checksums(root / spec.relpath() / "rgb")


def test_a_reader_opened_before_a_repair_returns_the_right_rows(tmp_path):
    root = tmp_path / "demo"
    init_store(root, dataset="demo", hashes=H1)
    spec = ShardSpec("train-00000", "train", ("a", "b", "c"))
    first = [video("a", failed={"stage": "decode", "reason": "flaky"}), video("b", seed=2), video("c", seed=3)]
    write_shard(root, spec, first, hashes=H1)
    fs = FeatureStore(root, expected_hashes=H1)
    np.testing.assert_array_equal(fs.get("b", "rgb"), first[1]["features"]["rgb"])  # row 0 is b's now
    redone = [video("a", seed=1), video("b", seed=2), video("c", seed=3)]  # a retry: a is ok, rows move
    write_shard(root, spec, redone, hashes=H1)
    for v in redone[1:]:  # today's main: b's read returns a's row, c's returns b's
        np.testing.assert_array_equal(fs.get(v["video_id"], "rgb"), v["features"]["rgb"])
        assert fs.meta(v["video_id"])["frame_indices"].tolist() == [0, 3, 6, 9]


def test_a_modality_with_other_decode_settings_is_refused_naming_both(tmp_path):
    from hydra import compose, initialize_config_dir

    from core.features import modality_hashes, modality_views
    from core.util import to_plain

    root = tmp_path / "demo"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        feats = to_plain(compose(config_name="extract", overrides=["features=tiny"]).features)

    def cfg(modalities, frames):
        return {**feats, "modalities": modalities, "decode": {**feats["decode"], "num_frames_stored": frames}}
    base = cfg(["rgb", "audio"], 8)
    init_store(root, dataset="demo", hashes=modality_hashes(base), features=modality_views(base))
    same = cfg(["normal"], 8)
    assert "normal" in init_store(root, dataset="demo", hashes=modality_hashes(same), features=modality_views(same))
    (root / "train" / "train-00000.zarr").mkdir(parents=True)  # a finished shard: the store holds features
    (root / "train" / "train-00000.zarr" / MARKER).write_text("{}")
    other = cfg(["depth"], 4)
    with pytest.raises(StoreMismatchError, match=r"depth: store decode \{num_frames_stored: 8\} \(as audio, normal, rgb\), "
                                                 r"this run decode \{num_frames_stored: 4\}"):
        init_store(root, dataset="demo", hashes=modality_hashes(other), features=modality_views(other))
    assert "depth" not in json.loads((root / "store.json").read_text())["modalities"]
