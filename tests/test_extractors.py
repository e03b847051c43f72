"""The extractor stages with their tiny presets, on a hand-made shard payload (core/schema.py).

One table drives the shape/dtype/range and determinism checks for every stage; the rest checks
the contract's skip rules and the geometry each stage must get right (flow direction, normals of
a tilted plane, point sampling and patch lifting, audio windows).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from presets import extractor_preset
from extractors import audio, geometry, normal, pointcloud, render

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"
F, H, W = 4, 48, 64
SHIFT = 3  # pixels the texture of video 0 moves right between a frame and its next frame

# Stage name -> tiny preset, in the graph's order (each stage may read what earlier ones added).
PRESETS = {"depth": "depth_tiny", "flow": "flow_opencv", "normal": "normal", "encoder": "encoder_tiny",
           "pointcloud": "pointcloud", "audio": "audio_tiny"}
# What each stage adds per video, besides its features (which its output_spec describes).
ADDS = {
    "depth": {("maps", "depth"): ((F, H, W), np.float32), ("images", "depth"): ((F, H, W, 3), np.uint8)},
    "flow": {("maps", "flow"): ((F, 2, H, W), np.float32), ("images", "flow"): ((F, H, W, 3), np.uint8)},
    "normal": {("maps", "normal"): ((F, 3, H, W), np.float32), ("images", "normal"): ((F, H, W, 3), np.uint8)},
    "encoder": {},
    "pointcloud": {("maps", "pointcloud"): ((5000, 3), np.float32)},
    "audio": {},
}


def config(preset: str, **overrides):
    cfg = extractor_preset(preset)
    cfg.num_frames_stored = F
    if preset == "pointcloud":  # composed beside the encoder, this is ${..encoder.dim}
        cfg.feature_dim = extractor_preset("encoder_tiny").dim
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build(stage: str, **overrides):
    cfg = config(PRESETS[stage], **overrides)
    return get_class(cfg._target_)(cfg)


def texture(seed: int, height: int = H, width: int = W + 64) -> np.ndarray:
    """A smooth random RGB texture (Farneback needs gradients, the ViT needs something to see)."""
    noise = np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def video_dict(video_id: str, seed: int, *, with_next: bool, with_audio: bool) -> dict:
    tex = texture(seed)
    frames = np.stack([tex[:, 8 + 10 * i: 8 + 10 * i + W] for i in range(F)])
    # next[y, x] = frame[y, x - SHIFT]: the content moves right by SHIFT pixels.
    following = np.stack([tex[:, 8 + 10 * i - SHIFT: 8 + 10 * i - SHIFT + W] for i in range(F)])
    t = np.arange(3 * 16000) / 16000
    sound = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size))
    return {
        "video_id": video_id, "path": f"/data/{video_id}.mp4", "start": None, "end": None, "failed": None,
        "errors": [], "frames": frames, "next_frames": following if with_next else None,
        "frame_indices": np.arange(F, dtype=np.int64) * 5, "timestamps": np.arange(F) * 0.5, "fps": 10.0,
        "num_frames": 5 * F, "decoder": "decord",
        "audio": sound.astype(np.float32) if with_audio else None, "audio_sr": 16000,
        "maps": {}, "images": {}, "features": {}, "model_meta": {},
    }


def synthetic_payload() -> dict:
    """Two decoded videos (the second without audio and without next frames) and one failed."""
    failed = {"video_id": "broken", "path": "/data/broken.mp4", "start": None, "end": None, "errors": [],
              "failed": {"stage": "decode", "reason": "moov atom not found"},
              "maps": {}, "images": {}, "features": {}, "model_meta": {}}
    return {"shard_id": "train-00000", "split": "train", "timings": {},
            "videos": [video_dict("vid_a", 1, with_next=True, with_audio=True),
                       video_dict("vid_b", 2, with_next=False, with_audio=False), failed]}


@pytest.fixture(scope="module")
def chain():
    """Every stage once, in graph order, keeping each stage's input for the determinism test."""
    payload = synthetic_payload()
    inputs, stages = {}, {}
    for name in PRESETS:
        stages[name] = build(name)
        inputs[name] = copy.deepcopy(payload)
        payload = stages[name](payload)
    return {"payload": payload, "inputs": inputs, "stages": stages}


def added(stage_name: str, stage, video: dict) -> dict:
    """The arrays a stage added to one video, keyed (group, key)."""
    keys = list(ADDS[stage_name]) + [("features", k) for k in stage.output_spec()]
    return {k: video[k[0]][k[1]] for k in keys if k[1] in video[k[0]]}


def check_ranges(name: str, video: dict) -> None:
    if name == "depth":
        d = video["maps"]["depth"]
        assert np.isfinite(d).all() and (d > 0).all() and d.std() > 0
    elif name == "flow":
        assert np.isfinite(video["maps"]["flow"]).all()
    elif name == "normal":
        norms = np.linalg.norm(video["maps"]["normal"], axis=1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-4) and (norms > 0).mean() > 0.9
        rays = geometry.backproject(np.ones((H, W), np.float32), *geometry.intrinsics(H, W, config("normal")))
        facing = (video["maps"]["normal"] * rays[None]).sum(axis=1)  # n . p < 0: towards the camera
        assert (facing[norms > 0] < 0).all()
    elif name == "encoder":
        feats = [video["features"][m].astype(np.float32) for m in ("rgb", "depth", "flow", "normal")]
        assert all(np.isfinite(f).all() and f.std() > 0.1 for f in feats)
        assert not any(np.array_equal(a, b) for i, a in enumerate(feats) for b in feats[i + 1:])
    elif name == "pointcloud":
        xyz = video["features"]["pointcloud_xyz"]
        assert (xyz.min(axis=0) == 0).all() and xyz.max() == 255
        assert np.isfinite(video["features"]["pointcloud"].astype(np.float32)).all()
    elif name == "audio":
        a = video["features"]["audio"].astype(np.float32)
        assert np.isfinite(a).all() and a.std() > 0.1
    for group in ("images",):
        for img in video[group].values():
            assert img.dtype == np.uint8 and img.std() > 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_stage_outputs_match_spec_dtype_and_range(chain, name):
    stage, video = chain["stages"][name], chain["payload"]["videos"][0]
    spec = stage.output_spec()
    assert spec == type(stage).spec_for(stage.cfg)  # computable on the driver, without weights
    for (group, key), (shape, dtype) in ADDS[name].items():
        assert video[group][key].shape == shape and video[group][key].dtype == dtype, (group, key)
    for key, (shape, dtype) in spec.items():
        assert video["features"][key].shape == tuple(shape) and str(video["features"][key].dtype) == dtype, key
    assert video["model_meta"][name]["model_id"]
    check_ranges(name, video)


@pytest.mark.parametrize("name", list(PRESETS))
def test_two_fresh_instances_give_bit_identical_outputs(chain, name):
    runs = [build(name)(copy.deepcopy(chain["inputs"][name])) for _ in range(2)]
    for i in range(2):  # both videos that reach the stage
        want = added(name, chain["stages"][name], chain["payload"]["videos"][i])
        for run in runs:
            got = added(name, chain["stages"][name], run["videos"][i])
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (name, i, k)


def test_failed_video_is_left_untouched(chain):
    original = synthetic_payload()["videos"][2]
    assert chain["payload"]["videos"][2] == original


def test_named_conditions_become_error_entries_not_outputs(chain):
    b = chain["payload"]["videos"][1]
    stages = {e["stage"]: e["reason"] for e in b["errors"]}
    assert set(stages) == {"flow", "audio"}
    assert "next frame" in stages["flow"] and "no audio stream" in stages["audio"]
    assert "flow" not in b["maps"] and "audio" not in b["features"] and "flow" not in b["features"]
    assert {"rgb", "depth", "normal", "pointcloud", "pointcloud_xyz"} <= set(b["features"])
    assert chain["payload"]["videos"][0]["errors"] == []


@pytest.mark.parametrize("name", ["normal", "pointcloud"])
def test_stages_that_need_depth_record_its_absence(name):
    video = video_dict("no_depth", 3, with_next=True, with_audio=True)
    video["features"]["rgb"] = np.zeros((F, 65, 64), np.float16)
    out = build(name)({"videos": [video]})["videos"][0]
    assert [e["stage"] for e in out["errors"]] == [name] and "depth" in out["errors"][0]["reason"]
    assert name not in out["maps"] and name not in out["model_meta"]


def test_flow_of_a_rightward_translation_points_right(chain):
    flow = chain["payload"]["videos"][0]["maps"]["flow"][:, :, 8:-8, 8:-8]  # away from the borders
    dx, dy = flow[:, 0].mean(), flow[:, 1].mean()
    assert abs(dx - SHIFT) < 0.3 and abs(dy) < 0.2, (dx, dy)


def test_flow_rendering_uses_the_colour_wheel():
    right = np.zeros((1, 2, 8, 8), np.float32)
    right[:, 0] = 1.0
    img = render.flow_to_image(right)[0, 0, 0]
    assert img[0] > 200 and img[0] > img[2]  # Middlebury wheel: +x is red


def test_normals_of_a_tilted_plane():
    # Plane z = z0 + a * x in the camera frame, seen through the FOV prior: normal (a, 0, -1)/|.|.
    cfg = OmegaConf.create({"fov_deg": 60.0, "intrinsics": None, "smooth_px": 0})
    fx, fy, cx, cy = geometry.intrinsics(H, W, cfg)
    a, z0 = 0.5, 3.0
    rx = (np.arange(W)[None, :] - cx) / fx * np.ones((H, 1))
    depth = (z0 / (1 - a * rx)).astype(np.float32)
    n = normal.normals_from_depth(depth, cfg)[:, 2:-2, 2:-2].reshape(3, -1)
    want = np.array([a, 0.0, -1.0]) / math.sqrt(1 + a * a)
    assert np.abs(n - want[:, None]).max() < 1e-3


def test_a_wall_facing_the_camera_renders_lavender():
    cfg = OmegaConf.create({"fov_deg": 60.0, "intrinsics": None, "smooth_px": 3})
    n = normal.normals_from_depth(np.full((H, W), 2.0, np.float32), cfg)
    assert np.allclose(n[:, 5:-5, 5:-5], np.array([0, 0, -1.0])[:, None, None], atol=1e-5)
    img = render.normal_to_image(n[None])[0]
    assert tuple(img[H // 2, W // 2]) == (128, 128, 255)


def test_pointcloud_samples_with_replacement_when_the_scene_is_small():
    stage = build("pointcloud", num_points=64)
    depth = np.full((F, 4, 4), 2.0, np.float32)  # 16 pixels, all in one plane, one frame's worth
    tokens = np.random.default_rng(0).standard_normal((F, 65, 64)).astype(np.float16)
    out = stage.build("tiny_scene", depth, tokens)
    assert out["features"].shape == (64, 64) and out["q"].shape == (64, 3) and out["q"].dtype == np.uint8
    assert out["meta"]["sampled_with_replacement"] and out["meta"]["voxels"] <= 16


def test_pointcloud_sampling_is_seeded_by_video_id():
    stage = build("pointcloud", num_points=256)
    depth = np.random.default_rng(0).uniform(1, 4, (F, H, W)).astype(np.float32)
    tokens = np.random.default_rng(1).standard_normal((F, 65, 64)).astype(np.float16)
    a, a2, b = (stage.build(v, depth, tokens) for v in ("one", "one", "two"))
    assert np.array_equal(a["q"], a2["q"]) and np.array_equal(a["features"], a2["features"])
    assert not np.array_equal(a["xyz"], b["xyz"])


def test_lifted_features_come_from_the_patch_under_each_pixel():
    # 2 x 2 patch grid over a 4 x 4 frame; token t carries the value t in every channel.
    tokens = np.arange(5, dtype=np.float32)[None, :, None].repeat(3, axis=2)
    pixels = {(0, 0): 1, (0, 3): 2, (3, 0): 3, (3, 3): 4}
    sources = [np.array([v * 4 + u]) for v, u in pixels]
    got = pointcloud.lift_features(tokens, sources, 4, 4)[:, 0]
    assert got.tolist() == list(pixels.values())
    mixed = pointcloud.lift_features(tokens, [np.array([0, 3, 3])], 4, 4)[0, 0]  # mean over its pixels
    assert mixed == pytest.approx((1 + 2 + 2) / 3)


def test_audio_windows_cover_the_clip_and_stay_inside_it():
    win = audio.chunk_windows(160_000, 2, 82_160)
    assert win[0][0] == 0 and win[1][1] == 160_000 and all(b - a == 82_160 for a, b in win)
    short = audio.chunk_windows(1000, 2, 82_160)
    assert short == [(0, 1000), (0, 1000)]


def test_ast_time_positions_keep_the_centre_columns():
    freq, t_src, t_dst = 3, 11, 5
    pos = torch.arange(2 + freq * t_src, dtype=torch.float32).view(1, -1, 1)
    out = audio.fit_time_positions(pos, freq, t_src, t_dst)
    grid = out[0, 2:, 0].view(freq, t_dst)
    start = t_src // 2 - t_dst // 2
    assert out[0, :2, 0].tolist() == [0.0, 1.0]
    assert grid[1].tolist() == [2 + t_src + start + i for i in range(t_dst)]


def test_voxelise_agrees_with_open3d_voxel_down_sample():
    import open3d as o3d

    points = np.random.default_rng(0).uniform(-1, 1, (5000, 3)) * np.array([2.0, 1.0, 0.5])
    centroids, order, starts, counts = pointcloud.voxelise(points, 0.1)
    ref = np.asarray(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(0.1).points)
    assert len(centroids) == len(ref) and counts.sum() == len(points)
    key = lambda a: a[np.lexsort(a.T)]  # noqa: E731
    assert np.allclose(key(centroids), key(ref), atol=1e-9)
    i = 7  # a voxel's members are the points whose mean is its centroid
    assert np.allclose(points[order[starts[i]:starts[i] + counts[i]]].mean(axis=0), centroids[i])


def test_a_non_finite_output_is_a_listed_failure_of_its_stage_never_a_blank_image():
    """The real tiny depth model, with a NaN injected into its output for the first frame (what an
    fp16 overflow of ZoeDepth gives): that video's depth is a listed failure of the depth stage, with
    no map and no image (render would have drawn the NaNs as a blank picture); the other video keeps
    its depth, and the stages that need depth list its absence."""
    from pipeline.graph import ExtractorStage

    stage = ExtractorStage("depth", OmegaConf.to_container(config("depth_tiny"), resolve=True))

    calls = []

    def overflow(module, inputs, output):  # the stage predicts video by video: the first call is vid_a's
        if not calls:
            output.predicted_depth[0] = float("nan")
        calls.append(1)
        return output

    stage.extractor.model.register_forward_hook(overflow)
    payload = synthetic_payload()
    a, b, _ = stage.run(payload)["videos"]
    (error,) = a["errors"]
    assert error["stage"] == "depth" and "maps.depth of video vid_a holds" in error["reason"]
    assert "non-finite" in error["reason"] and "dtype=float32" in error["reason"]
    assert "depth" not in a["maps"] and "depth" not in a["images"] and "depth" not in a["model_meta"]
    assert b["errors"] == [] and np.isfinite(b["maps"]["depth"]).all() and "depth" in b["images"]
    out = build("normal")({"videos": [a]})["videos"][0]
    assert [e["stage"] for e in out["errors"]] == ["depth", "normal"] and "normal" not in out["maps"]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("depth*.yaml")))
def test_zoedepth_never_computes_in_float16(name):
    """ZoeDepth's outputs overflow float16 (isl-org/ZoeDepth#56): every ZoeDepth preset asks float32."""
    cfg = extractor_preset(name)
    is_zoe = "zoedepth" in str(cfg.get("model_id") or "").lower() or \
        (cfg.get("random_init") or {}).get("model", {}).get("model_type") == "zoedepth"
    assert not is_zoe or cfg.dtype in ("float32", "bfloat16"), (name, cfg.dtype)
