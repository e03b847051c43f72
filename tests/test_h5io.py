"""HDF5 interop (pipeline.h5io, scripts/export.py): both layouts' structure, attrs, chunking and
compression; a bit-for-bit round trip store -> h5 -> new store; validation errors; the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from core.modalities import NAMES, STORE_KEYS, get
from core.schema import QARecord, safe_video_id
from core.store import STORE_FORMAT, FeatureStore, ShardSpec, StoreError
from pipeline.h5io import LAYOUTS, H5Error, export_store, import_h5
from pipeline.store import init_store, write_shard
from trainer.config import DataConfig, PromptConfig
from trainer.data import QADataset, feature_widths

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
HASH = "0123456789abcdef"
HASHES = {m: HASH for m in ("rgb", "audio", "pointcloud")}  # the fixture store's registry
FEATS = {"rgb": {"modalities": ["rgb"], "note": "fixture"}}
POINTS = get("pointcloud").store_keys  # (features, voxel xyz)
LACKS_AUDIO = "v02"


def video(vid: str, rng: np.random.Generator, *, audio: bool = True) -> dict:
    feats = {"rgb": rng.standard_normal((4, 5, 6)).astype(np.float16),
             POINTS[0]: rng.standard_normal((7, 6)).astype(np.float16),
             POINTS[1]: rng.integers(0, 32, (7, 3)).astype(np.uint8)}
    if audio:
        feats["audio"] = rng.standard_normal((2, 3, 4)).astype(np.float16)
    return {"video_id": vid, "features": feats, "frame_indices": np.arange(4), "timestamps": np.arange(4) * 0.5,
            "errors": [] if audio else [{"stage": "audio", "reason": "no audio stream"}]}


@pytest.fixture
def store(tmp_path) -> Path:
    """Two shards (train, val) of real features; v02 has no audio; vbad failed entirely."""
    root = tmp_path / "feats" / "demo"
    init_store(root, dataset="demo", hashes=HASHES, features=FEATS)
    rng = np.random.default_rng(0)
    train = [video("v00", rng), video("v01", rng), video(LACKS_AUDIO, rng, audio=False),
             {"video_id": "vbad", "failed": {"stage": "decode", "reason": "corrupt"}}]
    write_shard(root, ShardSpec("train-00000", "train", ("v00", "v01", LACKS_AUDIO, "vbad")), train, hashes=HASHES)
    write_shard(root, ShardSpec("val-00000", "val", ("v03", "v04")), [video("v03", rng), video("v04", rng)],
                hashes=HASHES)
    return root


def h5_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}


# ---------------------------------------------------------------------- export


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_writes_one_file_per_key_with_attrs_chunks_and_gzip(store, layout):
    done = export_store(store, layout=layout, level=6)
    fs = FeatureStore(store)
    assert [r["modality"] for r in done] == [k for k in STORE_KEYS if k in fs.modalities]
    assert {Path(r["path"]).name for r in done} == {"rgb.h5", "audio.h5", "pointcloud.h5", "pointcloud_xyz.h5"}
    for r in done:
        key, path = r["modality"], Path(r["path"])
        assert path.parent == store / "export"
        ids = [v for v in fs.video_ids if fs.has(v, key)]
        shape = list(fs.modalities[key]["shape"])
        attrs = h5_attrs(path)
        assert attrs["config_hash"] == HASH and attrs["dataset"] == "demo" and attrs["modality"] == key
        assert attrs["store_format"] == STORE_FORMAT and attrs["layout"] == layout
        assert attrs["shape"] == shape and attrs["dtype"] == fs.modalities[key]["dtype"]
        assert attrs["num_videos"] == len(ids) and attrs["skipped"] == len(fs) - len(ids)
        assert json.loads(attrs["features"]) == FEATS.get(get(key).name if key in NAMES else "pointcloud", {})
        with h5py.File(path, "r") as f:
            if layout == "stacked":
                assert sorted(f) == sorted(["ids", key])
                assert [s.decode() for s in f["ids"][()]] == ids
                assert h5py.check_string_dtype(f["ids"].dtype).encoding == "utf-8"
                arrays = [f[key]]
                assert f[key].shape == (len(ids), *shape) and f[key].chunks == (1, *shape)
            else:
                assert sorted(f) == ids
                arrays = [f[v] for v in ids]
                assert all(a.shape == tuple(shape) and a.chunks == tuple(shape) for a in arrays)
            assert all(a.compression == "gzip" and a.compression_opts == 6 for a in arrays)
    audio = next(r for r in done if r["modality"] == "audio")
    assert audio["videos"] == 4 and audio["skipped"] == 1  # v02 lacks audio: skipped and counted
    assert not list((store / "export").glob(".tmp-*"))


def test_export_one_modality_to_a_chosen_path_and_no_compression(store, tmp_path):
    (r,) = export_store(store, modality="pointcloud", out_dir=tmp_path / "x", compression="none")
    assert r["path"] == str(tmp_path / "x" / "pointcloud.h5") and r["shape"] == [7, 6]
    with h5py.File(r["path"], "r") as f:
        assert f["v00"].compression is None
    assert not (tmp_path / "x" / "pointcloud_xyz.h5").exists()  # xyz only with `all` (or by name)


@pytest.mark.parametrize("kwargs, message", [
    ({"modality": "thermal"}, "has no 'thermal' features; it has rgb, audio, pointcloud, pointcloud_xyz"),
    ({"modality": ["rgb", "flow"]}, "has no 'flow' features"),
    ({"layout": "nested"}, "export.layout='nested'"),
    ({"level": 12}, "level 0..9"),
])
def test_export_errors_say_what_to_do(store, kwargs, message):
    with pytest.raises(H5Error, match=re.escape(message)):
        export_store(store, **kwargs)


def test_export_of_a_missing_store_says_to_extract(tmp_path):
    with pytest.raises(StoreError, match="make extract"):
        export_store(tmp_path / "nothing")


def test_an_interrupted_export_leaves_no_file(store, monkeypatch):
    def boom(self, vid, key):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureStore, "get", boom)
    with pytest.raises(KeyboardInterrupt):
        export_store(store, modality="rgb")
    assert list((store / "export").iterdir()) == []  # neither the file nor its temporary


# ---------------------------------------------------------------------- round trip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_is_bit_for_bit(store, tmp_path, layout):
    files = [r["path"] for r in export_store(store, layout=layout)]
    new = tmp_path / "imported" / "demo"
    out = import_h5(files, root=new, dataset="demo", shard_size=2)
    assert out["hashes"] == HASHES and "config_hash attr" in out["hash_from"]
    assert out["layouts"] == {Path(f).stem: layout for f in files} and out["shards"] == 3
    old, fs = FeatureStore(store), FeatureStore(new, expected_hashes=HASHES)
    assert fs.video_ids == old.video_ids == ["v00", "v01", LACKS_AUDIO, "v03", "v04"]
    assert fs.modalities == old.modalities and fs.info["modalities"]["rgb"]["features"] == FEATS["rgb"]
    for vid in old.video_ids:
        for key in old.modalities:
            assert fs.has(vid, key) == old.has(vid, key), (vid, key)
            if old.has(vid, key):
                a, b = old.get(vid, key), fs.get(vid, key)
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (vid, key)
    assert not fs.has(LACKS_AUDIO, "audio")
    failures = [json.loads(line) for line in (new / "failures.jsonl").read_text().splitlines()]
    assert [(f["video_id"], f["stage"]) for f in failures] == [(LACKS_AUDIO, "import")]
    assert json.loads((new / "report.json").read_text())["videos_ok"] == 5
    assert not list(new.parent.glob(".tmp-*"))


def test_the_trainer_reads_an_imported_store(store, tmp_path):
    new = tmp_path / "imported" / "demo"
    import_h5([r["path"] for r in export_store(store)], root=new, dataset="demo")
    fs = FeatureStore(new, expected_hashes=HASHES)
    assert feature_widths(fs) == {"vision_width": 6, "audio_width": 4}
    mods = [k for k in fs.modalities if k in NAMES]  # each modality once (xyz rides with its points)
    record = QARecord("q0", "v00", "train", "what?", "red", options=("red", "blue"), answer_idx=0)
    ds = QADataset(fs, [record], mods, num_frames=2, train=False, split="train",
                   data=DataConfig(missing="zero", max_points=5, num_workers=0, seed=0),
                   prompt=PromptConfig(multiple_choice="{question} {options}", open_ended="{question}",
                                       situation="{situation} {prompt}", normalize="none", max_words=50))
    item = ds[0]
    assert item["features"]["rgb"].shape == (2, 5, 6) and item["xyz"].shape == (5, 3)
    np.testing.assert_array_equal(item["features"]["audio"], FeatureStore(store).get("v00", "audio"))


# ---------------------------------------------------------------------- import of foreign files


def test_import_of_a_foreign_stacked_file_makes_ids_safe_and_takes_the_hash_from_features(tmp_path):
    raw_ids = ["1106/4010069381", "1107/22"]
    feats = np.random.default_rng(1).standard_normal((2, 3, 4, 8)).astype(np.float32)
    path = tmp_path / "app_feat.h5"
    with h5py.File(path, "w") as f:  # the NExT-QA style: `feat` + `ids`, no attrs
        f["feat"] = feats
        f["ids"] = np.array(raw_ids, dtype=object).astype("S")
    with pytest.raises(H5Error, match="no `modality` attr"):
        import_h5(path, root=tmp_path / "s" / "nextqa", dataset="nextqa")
    with pytest.raises(H5Error, match="carry no config hash"):
        import_h5(path, root=tmp_path / "s" / "nextqa", dataset="nextqa", modalities="rgb")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        features = compose(config_name="import", overrides=["import.path=x.h5"]).features
    out = import_h5(path, root=tmp_path / "s" / "nextqa", dataset="nextqa", modalities="rgb", features=features)
    assert "features config" in out["hash_from"] and out["renamed_ids"] == 2
    from core.features import modality_hashes

    assert out["hashes"] == {"rgb": modality_hashes(features, ["rgb"])["rgb"]}
    fs = FeatureStore(tmp_path / "s" / "nextqa", expected_hashes=out["hashes"])
    assert fs.video_ids == sorted(safe_video_id(v) for v in raw_ids)
    np.testing.assert_array_equal(fs.get(safe_video_id(raw_ids[0]), "rgb"), feats[0])
    assert fs.meta(safe_video_id(raw_ids[1]))["frame_indices"].tolist() == [-1, -1, -1]  # not known


def write_h5(path: Path, arrays: dict, modality: str | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for name, arr in arrays.items():
            f[name] = arr
        if modality:
            f.attrs["modality"] = modality
    return path


F16 = np.zeros((4, 5, 6), np.float16)


@pytest.mark.parametrize("files, message", [
    ([({"a": F16.astype(np.int32)}, "rgb")], r"rgb arrays are int32 \[4, 5, 6\] per video, expected float16"),
    ([({"a": F16[0]}, "rgb")], "expected float16/32/64, 3 dims"),
    ([({"a": np.zeros((7, 4), np.float16)}, "pointcloud_xyz")], r"expected uint8 \[points, 3\]"),
    ([({"a": F16}, "smell")], "'smell' is not a store key"),
    ([({"a": F16, "b": F16[:2]}, "rgb")], "videos have different shapes"),
    ([({"ids": np.array([b"a", b"a"]), "x": F16[None].repeat(2, 0)}, "rgb")], "video id 'a' appears twice"),
    ([({"a": np.zeros((7, 6), np.float16)}, "pointcloud")], r"pointcloud needs \['pointcloud_xyz'\] too"),
    ([({"a": F16}, "rgb"), ({"a": F16[:2]}, "flow")], "frame modalities must share their stored frames"),
    ([({"a": F16}, "rgb"), ({"b": F16}, "rgb")], r"store keys \['rgb'\] come from more than one file"),
    ([({"ids": np.array([b"a", b"b"]), "x": F16[None], "y": F16[None]}, "rgb")], "name the features with import.array"),
    ([({"ids": np.array([b"a", b"b"]), "x": F16[None]}, "rgb")], r"'ids' has shape \(2,\) but 'x' has 1 rows"),
])
def test_import_validation_errors(tmp_path, files, message):
    paths = [write_h5(tmp_path / f"f{i}.h5", arrays, key) for i, (arrays, key) in enumerate(files)]
    with pytest.raises(H5Error, match=message):
        import_h5(paths, root=tmp_path / "s" / "x", dataset="x", config_hash="h")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_import_refuses_an_existing_store_unless_overwrite(store, tmp_path):
    path = export_store(store, modality="rgb")[0]["path"]
    with pytest.raises(H5Error, match="already holds a feature store.*import.overwrite=true"):
        import_h5(path, root=store, dataset="demo")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(H5Error, match="not a feature store"):
        import_h5(path, root=tmp_path / "junk", dataset="junk", overwrite=True)
    import_h5(path, root=store, dataset="demo", overwrite=True, config_hash="other")
    fs = FeatureStore(store, expected_hashes={"rgb": "other"})
    assert list(fs.modalities) == ["rgb"] and len(fs) == 5


# ---------------------------------------------------------------------- the CLI and its configs


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_export_cli_exit_codes(store, tmp_path):
    common = ["scripts/export.py", f"out={store.parent}", "dataset=demo"]
    ok = run_script(*common, "export.layout=stacked", "export.modality=rgb", f"export.dir={tmp_path}")
    assert ok.returncode == 0, ok.stderr
    assert f"wrote {tmp_path}/rgb.h5: rgb stacked, 5 videos float16 (4, 5, 6)" in ok.stdout
    assert h5_attrs(tmp_path / "rgb.h5")["layout"] == "stacked"
    # issue 27: the import's log named the store's combined hash as if it were the file's attr
    imported = run_script("scripts/import_features.py", f"out={tmp_path / 'imp'}", "dataset=demo",
                          f"import.path={tmp_path / 'rgb.h5'}")
    assert imported.returncode == 0, imported.stderr
    assert f"config hashes rgb {h5_attrs(tmp_path / 'rgb.h5')['config_hash']} from the config_hash attr" \
        in imported.stdout, imported.stdout
    bad = run_script(*common, "export.modality=thermal")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "it has rgb, audio" in errors[0], bad.stderr


def test_export_and_import_configs_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ex = compose(config_name="export", overrides=["out=/o", "dataset=nextqa"])
        im = compose(config_name="import", overrides=["out=/o", "import.path=[a.h5,b.h5]"])
    assert ex.store == "/o/nextqa" and ex.export.dir == "/o/nextqa/export"
    assert ex.export.layout in LAYOUTS and im["import"].split == "train" and list(im["import"].path) == ["a.h5", "b.h5"]
    for name in ("export", "import"):
        assert (CONF / f"{name}.yaml").read_text().startswith("# make " + name)


# ---------------------------------------------------------------------- hostile files (issue 20 case 11)


def hostile(tmp_path: Path, kind: str) -> Path:
    """A small .h5 file of one kind an adversary (or a careless exporter) might hand over."""
    path = tmp_path / f"{kind}.h5"
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(120, dtype=np.float16).tobytes())  # "any local file"
    with h5py.File(path, "w") as f:
        f.attrs["modality"] = "rgb"
        if kind == "external_storage":  # the data of v1 lives in another file
            f.create_dataset("v1", shape=(4, 5, 6), dtype=np.float16, external=[(str(secret), 0, 240)])
        elif kind == "virtual":
            with h5py.File(tmp_path / "other.h5", "w") as o:
                o["data"] = F16
            layout = h5py.VirtualLayout(shape=F16.shape, dtype=F16.dtype)
            layout[...] = h5py.VirtualSource(tmp_path / "other.h5", "data", shape=F16.shape)
            f.create_virtual_dataset("v1", layout)
        elif kind == "external_link":
            with h5py.File(tmp_path / "other.h5", "w") as o:
                o["data"] = F16
            f["v1"] = F16
            f["v2"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")
        elif kind == "nan":
            f["v1"] = F16
            f["v2"] = np.full_like(F16, np.nan)
        elif kind == "huge":  # 1 video of 64 x 2^20 x 2^10 float16 = 128 GiB declared, nothing stored
            f.create_dataset("v1", shape=(64, 2**20, 2**10), dtype=np.float16, chunks=(1, 64, 1024))
        elif kind == "float128":
            f["v1"] = F16.astype(np.longdouble)
        elif kind == "bad_utf8":
            f["ids"] = np.array([b"ok", b"\xff\xfebad"])
            f["feat"] = np.zeros((2, 4, 5, 6), np.float16)
    return path


@pytest.mark.parametrize("kind, message", [
    ("external_storage", r"'v1' keeps its data in external files .*secret\.bin"),
    ("virtual", "'v1' is a virtual dataset"),
    ("external_link", r"'v2' is a link to another file .*other\.h5"),
    ("nan", "video 'v2' has 120 NaN/inf values in its rgb features"),
    ("huge", r"declares 131072\.0 MiB per video .*import\.max_video_mb=256"),
    ("float128", r"rgb arrays are float128 \[4, 5, 6\] per video, expected float16/32/64"),
    ("bad_utf8", r"'ids' row 1 is not valid UTF-8 \(b'\\xff\\xfebad'\)"),
])
def test_hostile_files_are_refused_before_anything_is_read_or_written(tmp_path, kind, message):
    """Issue 20 case 11: external storage was imported (any local file's bytes into the store),
    NaN/inf accepted, a 1.4 KB file declaring 130 GiB allocated, float128 and invalid UTF-8 ids
    crashed with tracebacks."""
    path = hostile(tmp_path, kind)
    assert path.stat().st_size < 100_000
    with pytest.raises(H5Error, match=message):
        import_h5(path, root=tmp_path / "s" / "x", dataset="x", config_hash="h")
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_the_import_cli_refuses_a_hostile_file_in_one_line(tmp_path):
    proc = run_script("scripts/import_features.py", f"out={tmp_path / 's'}", "dataset=demo",
                      f"import.path={hostile(tmp_path, 'external_storage')}", "import.config_hash=h")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "external storage" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "s" / "demo").exists()
