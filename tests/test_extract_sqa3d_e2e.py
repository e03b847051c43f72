"""SQA3D with 3D-LLM's scene features, end to end through the real CLI and a real local Ray (slow):
a tiny SQA3D-shaped dataset made here, scene files for all scenes but one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from core.features import modality_hashes
from core.store import FeatureStore
from extractors.pointcloud import sample_voxels, video_seed
from media import write_video
from test_extract_e2e import COMMON, ROOT, run_extract

pytestmark = pytest.mark.slow
COMMON_FEATURES = [o for o in COMMON if o.startswith("features.")]  # what run_extract adds, for train.py
SPLITS = {"train": ["scene0000_00", "scene0001_00"], "val": ["scene0002_00"], "test": ["scene0003_00"]}
NO_PT = "scene0003_00"
POINTS = {"scene0000_00": 300, "scene0001_00": 40, "scene0002_00": 100}  # 40 < P: drawn with replacement
P = 64
BASE = ["dataset=sqa3d", "features=tiny", "features.modalities=[rgb,pointcloud]",
        f"features.extractors.pointcloud.num_points={P}"]
# 3D-LLM's files are SQA3D's default point source (conf/features/scene/sqa3d_tiny.yaml). Files at
# the tiny encoder's width, with the depth-lifted fallback, let the tiny model train on them.
SWAP = [*BASE, "features.extractors.pointcloud.feature_dim=${features.extractors.encoder.dim}",
        "features.extractors.pointcloud.scene_features.fallback=depth"]


def compose_app(app: str, *overrides: str):
    """The app's config with the features overrides the extraction run gets (run_extract's too)."""
    features = [o for o in COMMON if o.startswith("features.")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=app, overrides=[*SWAP, *features, *overrides])


def make_sqa3d(root, dim: int) -> None:
    """ScanQA_format/SQA_{split}.json, Video/<scene>.mp4 and 3D-LLM files for all but NO_PT."""
    (root / "ScanQA_format").mkdir(parents=True)
    (root / "Video").mkdir()
    qid = 0
    for split, scenes in SPLITS.items():
        rows = []
        for scene in scenes:
            write_video(root / "Video" / f"{scene}.mp4", frames=12, audio=False)
            for question in ("What is on my left?", "Is the door open?"):
                qid += 1
                rows.append({"answers": ["chair"], "object_ids": [], "object_names": [], "question": question,
                             "situation": "I am sitting on the bed.", "question_id": 220602000000 + qid,
                             "scene_id": scene, "position": [0.1, 0.2, 0.0, 0.0, 0.0, 0.7, 0.7]})
        (root / "ScanQA_format" / f"SQA_{split}.json").write_text(json.dumps(rows))
    feats_dir, voxels_dir = (root / f"voxelized_{kind}_sam_nonzero_preprocess" for kind in ("features", "voxels"))
    feats_dir.mkdir()
    voxels_dir.mkdir()
    for i, (scene, n) in enumerate(POINTS.items()):
        rng = np.random.default_rng(i)
        torch.save(torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32)), feats_dir / f"{scene}.pt")
        np.save(voxels_dir / f"{scene}.npy", rng.integers(40, 640, (n, 3)))  # past 255: shifted and scaled


def test_sqa3d_point_clouds_come_from_3dllm_files_and_fall_back_without_them(tmp_path):
    data = tmp_path / "sqa3d"
    dim = int(compose_app("extract").features.extractors.encoder.dim)  # the tiny encoder's width
    make_sqa3d(data, dim)
    run_extract(*SWAP, f"dataset.root={data}", f"out={tmp_path / 'out'}", "store.shard_size=2")
    root = tmp_path / "out" / "sqa3d"
    report = json.loads((root / "report.json").read_text())
    assert report["videos_ok"] == 4 and report["videos_failed"] == 0
    for key, shape in (("pointcloud", [P, dim]), ("pointcloud_xyz", [P, 3])):
        assert report["modalities"][key]["videos"] == 4 and report["modalities"][key]["shape"] == shape
    assert (root / "failures.jsonl").read_text() == ""

    # the trainer's composition of the same features node opens the store (same hash)
    fs = FeatureStore(root, expected_hashes=modality_hashes(compose_app("train", f"dataset.root={data}").features))
    for scene, n in POINTS.items():
        feats = torch.load(data / "voxelized_features_sam_nonzero_preprocess" / f"{scene}.pt", weights_only=True)
        coords = np.load(data / "voxelized_voxels_sam_nonzero_preprocess" / f"{scene}.npy")
        rows = sample_voxels(n, P, np.random.default_rng(video_seed(scene, 0)))
        assert np.array_equal(fs.get(scene, "pointcloud"), feats.numpy()[rows].astype(np.float16)), scene
        low, extent = coords.min(axis=0), (coords.max(axis=0) - coords.min(axis=0)).max()
        want = np.floor((coords[rows] - low) * 255 / extent + 0.5).astype(np.uint8)
        assert np.array_equal(fs.get(scene, "pointcloud_xyz"), want), scene
        meta = fs.meta(scene)["model_meta"]["pointcloud"]
        assert meta["source"] == "3d-llm" and meta["points_in_scene"] == n and meta["points_sampled"] == P
    fallback = fs.meta(NO_PT)["model_meta"]["pointcloud"]
    assert fallback["source"] == "depth+rgb-tokens" and f"{NO_PT}.pt does not exist" in fallback["scene_features"]
    assert fs.get(NO_PT, "pointcloud").shape == (P, dim) and fs.get(NO_PT, "pointcloud_xyz").max() == 255

    # a few training steps on it: an MMQA for the 3D modality, fed the imported features
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), *SWAP, *COMMON_FEATURES,
                           f"dataset.root={data}", f"out={tmp_path / 'out'}", "dataset.modalities=[rgb,pointcloud]",
                           f"run_dir={run}", "trainer.epochs=1", "trainer.max_steps=2", "trainer.batch_size=2",
                           "trainer.data.num_workers=0"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in rows if r["event"] == "setup")["params"]["pointcloud"] > 0
    assert all(set(r["loss"]) == {"rgb", "pointcloud"} for r in rows if r["event"] == "step")


def test_3dllm_features_keep_their_1408_width(tmp_path):
    """`make extract DATASET=sqa3d` with FEATURES=tiny and no extra flag: 3D-LLM's features are
    stored at their 1408 width (BLIP-2's ViT-g) whatever the tiny encoder's; the scene without a
    .pt lists a missing point cloud (a lifted one would be the tiny encoder's width)."""
    data = tmp_path / "sqa3d"
    make_sqa3d(data, 1408)
    run_extract(*BASE, f"dataset.root={data}", f"out={tmp_path / 'out'}", "store.shard_size=4")
    root = tmp_path / "out" / "sqa3d"
    report = json.loads((root / "report.json").read_text())
    assert report["videos_ok"] == 4 and report["modalities"]["pointcloud"] == {"videos": 3, "shape": [P, 1408],
                                                                               "dtype": "float16"}
    rows = [json.loads(line) for line in (root / "failures.jsonl").read_text().splitlines()]
    assert [(r["video_id"], r["stage"], r["fatal"]) for r in rows] == [(NO_PT, "pointcloud", False)]
