"""The point-cloud stage reading 3D-LLM's scene features (conf/extractor/pointcloud_3dllm.yaml), on
fixture scene files written here: stored keys, seeded uniform sampling, voxel mapping, fallback,
and the errors that name a bad file."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from core.hub import ModelUnavailableError
from extractors import pointcloud, scene_features
from pipeline.graph import ExtractorStage
from presets import extractor_preset
from test_extractors import F, H, W, video_dict

D, P = 8, 32  # a tiny feature width (the files' and the stage's), points per video


def write_scene(root: Path, scene: str, feats: np.ndarray | None, coords: np.ndarray | None) -> None:
    (root / "feats").mkdir(exist_ok=True)
    (root / "voxels").mkdir(exist_ok=True)
    if feats is not None:
        torch.save(torch.from_numpy(feats), root / "feats" / f"{scene}.pt")
    if coords is not None:
        np.save(root / "voxels" / f"{scene}.npy", coords)


def random_scene(seed: int, n: int, dim: int = D, low: int = 0, high: int = 200):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)).astype(np.float32),
            rng.integers(low, high, (n, 3)).astype(np.int64))


@pytest.fixture
def scenes(tmp_path):
    """Scenes by role -> scene id; the files under tmp_path/feats and tmp_path/voxels."""
    roles = {"plain": ("scene0000_00", random_scene(0, 200)),
             "big": ("scene0001_00", random_scene(1, 300, low=100, high=700)),   # values past 255
             "small": ("scene0002_00", random_scene(2, 10)),                     # fewer points than P
             "no_pt": ("scene0003_00", (None, random_scene(3, 20)[1])),
             "bad_n": ("scene0004_00", (random_scene(4, 20)[0], random_scene(4, 19)[1])),
             "bad_d": ("scene0005_00", random_scene(5, 20, dim=D + 3)),
             "nan": ("scene0006_00", (np.full((20, D), np.nan, np.float32), random_scene(6, 20)[1])),
             "no_npy": ("scene0007_00", (random_scene(7, 20)[0], None))}
    for scene, (feats, coords) in roles.values():
        write_scene(tmp_path, scene, feats, coords)
    return {role: scene for role, (scene, _) in roles.items()}


def stage_cfg(root: Path, **overrides):
    cfg = extractor_preset("pointcloud_3dllm")
    cfg.num_frames_stored, cfg.feature_dim, cfg.num_points = F, D, P
    cfg.resources.features_dir, cfg.resources.voxels_dir = str(root / "feats"), str(root / "voxels")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build(root: Path, **overrides):
    cfg = stage_cfg(root, **overrides)
    return get_class(cfg._target_)(cfg)


def video(scene: str, *, lifted_inputs: bool = False) -> dict:
    """A decoded video of `scene`; with depth and rgb tokens (what the depth-lifted fallback needs)."""
    v = video_dict(scene, 5, with_next=True, with_audio=False)
    if lifted_inputs:
        v["maps"]["depth"] = np.random.default_rng(0).uniform(1, 4, (F, H, W)).astype(np.float32)
        v["features"]["rgb"] = np.random.default_rng(1).standard_normal((F, 65, D)).astype(np.float16)
    return v


def load(root: Path, scene: str):
    return (torch.load(root / "feats" / f"{scene}.pt", weights_only=True).numpy(),
            np.load(root / "voxels" / f"{scene}.npy"))


def rows_of(stored: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Which file row each stored row is (rows are random, so the match is unique)."""
    half = feats.astype(np.float16)
    hits = [np.flatnonzero((half == row).all(axis=1)) for row in stored]
    assert all(len(h) == 1 for h in hits)
    return np.array([h[0] for h in hits])


def test_scene_rows_are_stored_under_the_usual_keys(tmp_path, scenes):
    stage = build(tmp_path)
    out = stage({"videos": [video(scenes["plain"])]})["videos"][0]
    assert out["errors"] == []
    for key, (shape, dtype) in stage.output_spec().items():
        assert out["features"][key].shape == shape and str(out["features"][key].dtype) == dtype, key
    feats, coords = load(tmp_path, scenes["plain"])
    rows = rows_of(out["features"]["pointcloud"], feats)
    assert len(set(rows)) == P  # N >= P: without replacement
    rng = np.random.default_rng(pointcloud.video_seed(scenes["plain"], 0))
    assert np.array_equal(rows, pointcloud.sample_voxels(len(feats), P, rng))  # seeded like the lifted path
    assert np.array_equal(out["features"]["pointcloud"], feats[rows].astype(np.float16))
    assert np.array_equal(out["features"]["pointcloud_xyz"], coords[rows])  # inside 0..255: kept as released
    meta = out["model_meta"]["pointcloud"]
    assert meta["source"] == "3d-llm" and meta["features_dir"] == str(tmp_path / "feats")
    assert meta["points_in_scene"] == 200 and meta["points_sampled"] == P and not meta["sampled_with_replacement"]
    assert meta["features_file"] == str(tmp_path / "feats" / f"{scenes['plain']}.pt")


def test_sampling_is_deterministic_per_video_and_uniform(tmp_path, scenes):
    payload = {"videos": [video(scenes["plain"])]}
    a, b = (build(tmp_path)(copy.deepcopy(payload))["videos"][0]["features"] for _ in range(2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    stage = build(tmp_path)
    n = 1000
    feats = np.arange(n, dtype=np.float32)[:, None].repeat(D, axis=1)  # row i holds i: the stored rows say which
    coords = np.zeros((n, 3), np.int64)
    picks = [stage.from_scene(f"scene{i:04d}_00", feats, coords, {})["features"][:, 0].astype(np.int64)
             for i in range(200)]
    assert all(len(set(p)) == P for p in picks) and len({tuple(p) for p in picks}) == 200
    counts = np.bincount(np.concatenate(picks) // 100, minlength=10)  # 10 bins of 100 rows, 640 draws each
    assert np.abs(counts - 640).max() < 0.15 * 640, counts


def test_a_scene_smaller_than_p_is_sampled_with_replacement(tmp_path, scenes):
    out = build(tmp_path)({"videos": [video(scenes["small"])]})["videos"][0]
    feats, _ = load(tmp_path, scenes["small"])
    rows = rows_of(out["features"]["pointcloud"], feats)
    assert out["features"]["pointcloud"].shape == (P, D) and set(rows) <= set(range(10))
    assert out["model_meta"]["pointcloud"]["sampled_with_replacement"]


@pytest.mark.parametrize("coords, want, offset, scale", [
    ([[0, 5, 255], [10, 0, 3]], [[0, 5, 255], [10, 0, 3]], [0, 0, 0], 1.0),               # kept as released
    ([[300, 400, 256], [500, 410, 260]], [[0, 0, 0], [200, 10, 4]], [300, 400, 256], 1.0),  # shifted to 0
    ([[100, 0, 0], [610, 255, 51]], [[0, 0, 0], [255, 128, 26]], [100, 0, 0], 0.5),        # shifted, then halved
    ([[-1, 0, 0], [2, 1, 1]], [[0, 0, 0], [3, 1, 1]], [-1, 0, 0], 1.0),                     # negatives shift too
])
def test_voxel_coordinates_map_into_0_255(coords, want, offset, scale):
    q, got_offset, got_scale = scene_features.to_grid(np.array(coords, np.int64))
    assert q.dtype == np.uint8 and q.tolist() == want
    assert got_offset.tolist() == offset and got_scale == pytest.approx(scale)


def test_a_scene_past_255_is_scaled_by_one_factor_computed_over_all_its_points(tmp_path, scenes):
    out = build(tmp_path)({"videos": [video(scenes["big"])]})["videos"][0]
    feats, coords = load(tmp_path, scenes["big"])
    rows = rows_of(out["features"]["pointcloud"], feats)
    low, extent = coords.min(axis=0), (coords.max(axis=0) - coords.min(axis=0)).max()
    assert extent > 255
    want = np.floor((coords[rows] - low) * 255 / extent + 0.5)
    assert np.array_equal(out["features"]["pointcloud_xyz"], want.astype(np.uint8))
    meta = out["model_meta"]["pointcloud"]
    assert meta["xyz_offset"] == low.tolist() and meta["xyz_scale"] == pytest.approx(255 / extent)


def test_a_scene_without_pt_gets_the_depth_lifted_cloud(tmp_path, scenes):
    out = build(tmp_path)({"videos": [video(scenes["no_pt"], lifted_inputs=True)]})["videos"][0]
    assert out["errors"] == [] and out["features"]["pointcloud"].shape == (P, D)
    meta = out["model_meta"]["pointcloud"]
    assert meta["source"] == "depth+rgb-tokens" and meta["model_id"] == "open3d:backproject+voxel"
    assert f"{scenes['no_pt']}.pt does not exist" in meta["scene_features"]


def test_fallback_none_lists_the_scene_without_pt_and_only_it(tmp_path, scenes):
    stage = build(tmp_path, **{"scene_features.fallback": "none"})
    payload = {"videos": [video(scenes["plain"], lifted_inputs=True), video(scenes["no_pt"], lifted_inputs=True)]}
    ok, missing = stage(payload)["videos"]
    assert ok["errors"] == [] and ok["model_meta"]["pointcloud"]["source"] == "3d-llm"
    assert [e["stage"] for e in missing["errors"]] == ["pointcloud"]
    assert str(tmp_path / "feats" / f"{scenes['no_pt']}.pt") in missing["errors"][0]["reason"]
    assert "pointcloud" not in missing["features"] and "pointcloud" not in missing["model_meta"]


@pytest.mark.parametrize("role, file, needle", [
    ("bad_n", "voxels/{}.npy", "has 19 points but its features file has 20"),
    ("bad_d", "feats/{}.pt", f"features are {D + 3} wide but pointcloud.feature_dim is {D}"),
    ("nan", "feats/{}.pt", "non-finite"),
    ("no_npy", "voxels/{}.npy", "missing"),
])
def test_a_bad_scene_file_is_listed_for_its_video_only_naming_the_file(tmp_path, scenes, role, file, needle):
    graph_stage = ExtractorStage("pointcloud", OmegaConf.to_container(stage_cfg(tmp_path), resolve=True))
    payload = {"shard_id": "s", "split": "train", "timings": {},
               "videos": [video(scenes[role], lifted_inputs=True), video(scenes["plain"])]}
    bad, good = graph_stage.run(payload)["videos"]
    assert good["errors"] == [] and good["features"]["pointcloud"].shape == (P, D)
    (error,) = bad["errors"]
    assert error["stage"] == "pointcloud" and str(tmp_path / file.format(scenes[role])) in error["reason"]
    assert needle in error["reason"] and "pointcloud" not in bad["features"]


def test_a_feature_dim_the_files_do_not_have_stops_the_run(tmp_path):
    write_scene(tmp_path, "scene0000_00", *random_scene(0, 20, dim=1408))
    with pytest.raises(ModelUnavailableError, match="1408 wide but pointcloud.feature_dim is 8") as err:
        build(tmp_path)
    assert str(tmp_path / "feats" / "scene0000_00.pt") in str(err.value)


def test_a_folder_that_does_not_exist_stops_the_run(tmp_path, scenes):
    with pytest.raises(ModelUnavailableError, match="voxels_dir .* is not a folder"):
        build(tmp_path, **{"resources.voxels_dir": str(tmp_path / "nowhere")})


def test_the_scene_id_can_come_from_the_video_file_name(tmp_path, scenes):
    v = video(scenes["plain"])
    v["video_id"], v["path"] = "some/other-id", f"/data/Video/{scenes['plain']}.mp4"
    out = build(tmp_path, **{"scene_features.id_from": "path_stem"})({"videos": [v]})["videos"][0]
    assert out["errors"] == [] and out["model_meta"]["pointcloud"]["points_in_scene"] == 200
