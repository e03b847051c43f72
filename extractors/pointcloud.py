"""Point-cloud stage: 3D points from depth, with features lifted from the rgb patch tokens.

The 3D-LLM recipe, from video instead of a scanned scene:
1. open3d back-projects each chosen frame's metric depth (pinhole prior of extractors.geometry,
   depth truncated to [min_depth, max_depth]); without camera poses the frames share the camera
   frame, i.e. a static camera is assumed (`frames: middle` uses one frame only).
2. Voxel down-sampling on open3d's voxel grid, keeping which pixels fell in each voxel
   (`voxelise`; numpy for speed, checked against open3d's voxel_down_sample).
3. A FIXED number P of voxels is sampled uniformly (seeded by the video id, so reruns are
   identical); a scene with fewer voxels is sampled with replacement and model_meta records
   the true count.
4. Each sampled point's feature is the mean, over the pixels in its voxel, of the rgb encoder
   token of the patch that pixel fell in (token 1 + row * G + col on the encoder's G x G grid
   over the whole resized frame; token 0, the class token, is never used).
5. xyz is quantised to integers 0..255 over the sampled points' bounding box with ONE scale for
   all axes (shapes keep their proportions; the largest extent spans 0..255).

Adds features.pointcloud float16 [P, dim] and features.pointcloud_xyz uint8 [P, 3] (the 3D-LLM
layout the trainer reads), maps.pointcloud float32 [P, 3] (metres, camera frame, for previews).

With `scene_features` configured (conf/extractor/pointcloud_3dllm.yaml), a video whose scene has
3D-LLM's files takes its points from them instead (extractors.scene_features: the same P uniform
rows seeded by the video id, features as released, voxel coordinates mapped to 0..255; maps.pointcloud
then holds the sampled voxel coordinates); a scene without a `.pt` falls back to the depth-lifted
cloud above, or with `fallback: none` its pointcloud is listed as missing.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from extractors import geometry, scene_features


def video_seed(video_id: str, seed: int) -> int:
    """A 64-bit seed from the video id: same video -> same points in every run and process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:8], "little")


def backproject_frames(depth: np.ndarray, frames: list[int], cfg) -> tuple[np.ndarray, np.ndarray]:
    """Valid 3D points of the chosen frames and, per point, its (frame, pixel) source as
    frame * H * W + v * W + u."""
    import open3d as o3d

    _, h, w = depth.shape
    fx, fy, cx, cy = geometry.intrinsics(h, w, cfg)
    camera = o3d.camera.PinholeCameraIntrinsic(w, h, fx, fy, cx, cy)
    points, sources = [], []
    for f in frames:
        d = np.ascontiguousarray(depth[f], np.float32)
        d = np.where(np.isfinite(d) & (d >= float(cfg.min_depth)), d, 0.0).astype(np.float32)
        cloud = o3d.geometry.PointCloud.create_from_depth_image(
            o3d.geometry.Image(d), camera, depth_scale=1.0, depth_trunc=float(cfg.max_depth),
            stride=1, project_valid_depth_only=False)  # keeps pixel order; invalid pixels are NaN
        xyz = np.asarray(cloud.points)
        keep = np.flatnonzero(np.isfinite(xyz).all(axis=1))
        points.append(xyz[keep])
        sources.append(f * h * w + keep)
    return np.concatenate(points), np.concatenate(sources)


def voxelise(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel down-sampling with provenance, on open3d's grid: voxel = floor((p - (min_bound -
    voxel_size / 2)) / voxel_size), centroid = mean of its points (what voxel_down_sample
    returns; tests/test_extractors.py checks the two agree).

    Done in numpy rather than with open3d's voxel_down_sample_and_trace because the trace comes
    back as one Python list per voxel: a million voxels (16 frames at 640 px) cost seconds to
    convert, where one sort over integer keys costs milliseconds. Returns centroids [V, 3] in
    a canonical order (by voxel key), and `order`, `starts`, `counts` such that voxel i owns
    points order[starts[i]:starts[i] + counts[i]].
    """
    low = points.min(axis=0) - voxel_size / 2.0
    cell = np.floor((points - low) / voxel_size).astype(np.int64)
    dims = cell.max(axis=0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    centroids = np.add.reduceat(points[order], starts, axis=0) / counts[:, None]
    return centroids, order, starts, counts


def sample_voxels(n_voxels: int, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """P voxel indices drawn uniformly: without replacement when there are enough, else with."""
    if n_voxels >= n_points:
        return np.sort(rng.choice(n_voxels, size=n_points, replace=False))
    return np.sort(rng.choice(n_voxels, size=n_points, replace=True))


def quantise(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Metric xyz [P, 3] -> uint8 [P, 3] over the bounding box, one scale for all axes."""
    low = xyz.min(axis=0)
    extent = float((xyz.max(axis=0) - low).max())
    scale = 255.0 / extent if extent > 0 else 0.0
    q = np.clip(np.floor((xyz - low) * scale + 0.5), 0, 255).astype(np.uint8)
    return q, low, extent


def lift_features(tokens: np.ndarray, sources: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Mean rgb patch token per group of pixels: tokens [F, 1 + G*G, D] and, per output point,
    the (frame, pixel) ids of its pixels -> float32 [len(sources), D]."""
    n_frames, n_tokens, dim = tokens.shape
    grid = math.isqrt(n_tokens - 1)
    if grid * grid != n_tokens - 1:
        raise ValueError(f"rgb features have {n_tokens} tokens: expected 1 class token + a square patch grid")
    sizes = np.array([len(s) for s in sources], np.int64)
    group = np.repeat(np.arange(len(sources)), sizes)
    frame, pixel = np.divmod(np.concatenate(sources), height * width)
    v, u = np.divmod(pixel, width)
    token = frame * n_tokens + 1 + (v * grid // height) * grid + (u * grid // width)
    # Pixels of one point mostly share a patch: reduce to distinct (point, token) pairs with
    # counts first, so the gather is over pairs, not pixels. Keys sort by point first.
    keys, counts = np.unique(group * (n_frames * n_tokens) + token, return_counts=True)
    point, token = np.divmod(keys, n_frames * n_tokens)
    weighted = tokens.reshape(-1, dim)[token].astype(np.float32) * counts[:, None].astype(np.float32)
    starts = np.flatnonzero(np.r_[True, point[1:] != point[:-1]])
    return np.add.reduceat(weighted, starts, axis=0) / sizes[:, None].astype(np.float32)


class PointCloudExtractor:
    """A fixed-size, feature-carrying point cloud per video (3D-LLM format)."""

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.frames not in ("all", "middle"):
            raise ValueError(f"pointcloud.frames must be 'all' or 'middle', got {cfg.frames!r}")
        self.meta = {"model_id": "open3d:backproject+voxel", "revision": None, "resolved_revision": None,
                     "source": "depth+rgb-tokens", "fov_deg": float(cfg.fov_deg), "voxel_size": float(cfg.voxel_size),
                     "num_points": int(cfg.num_points), "frames": cfg.frames}
        self.scenes = scene_features.SceneSource.from_cfg(cfg.get("scene_features"), int(cfg.feature_dim),
                                                          cfg.get("resources"))

    @classmethod
    def spec_for(cls, cfg) -> dict:
        p, d = int(cfg.num_points), int(cfg.feature_dim)
        return {"pointcloud": ((p, d), "float16"), "pointcloud_xyz": ((p, 3), "uint8")}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    def _missing(self, video: dict) -> str | None:
        if (video.get("maps") or {}).get("depth") is None:
            return "no depth map for this video (the depth stage did not produce one)"
        if (video.get("features") or {}).get("rgb") is None:
            return "no rgb encoder features for this video (the encoder stage did not produce them)"
        return None

    def build(self, video_id: str, depth: np.ndarray, rgb_tokens: np.ndarray) -> dict | str:
        """One video's point cloud, or the reason there is none (no valid depth at all)."""
        if rgb_tokens.shape[-1] != int(self.cfg.feature_dim):
            raise ValueError(f"video {video_id}: rgb features have dim {rgb_tokens.shape[-1]} but "
                             f"pointcloud.feature_dim is {self.cfg.feature_dim}")
        n_frames, h, w = depth.shape
        frames = list(range(n_frames)) if self.cfg.frames == "all" else [n_frames // 2]
        points, sources = backproject_frames(depth, frames, self.cfg)
        if len(points) == 0:
            return f"no valid depth within [{self.cfg.min_depth}, {self.cfg.max_depth}] m to back-project"
        centroids, order, starts, counts = voxelise(points, float(self.cfg.voxel_size))
        rng = np.random.default_rng(video_seed(video_id, int(self.cfg.seed)))
        chosen = sample_voxels(len(centroids), int(self.cfg.num_points), rng)
        xyz = centroids[chosen]
        q, low, extent = quantise(xyz)
        members = [sources[order[starts[i]:starts[i] + counts[i]]] for i in chosen]
        feats = lift_features(rgb_tokens, members, h, w)
        return {"xyz": xyz.astype(np.float32), "q": q, "features": feats.astype(np.float16),
                "meta": {"points_valid": int(len(points)), "voxels": int(len(centroids)),
                         "sampled_with_replacement": bool(len(centroids) < int(self.cfg.num_points)),
                         "bbox_min": [float(x) for x in low], "bbox_extent": extent}}

    def from_scene(self, video_id: str, feats: np.ndarray, coords: np.ndarray, files: dict) -> dict:
        """One video's point cloud from its scene's 3D-LLM rows: P rows drawn like build()'s voxels."""
        rng = np.random.default_rng(video_seed(video_id, int(self.cfg.seed)))
        chosen = sample_voxels(len(feats), int(self.cfg.num_points), rng)
        grid, offset, scale = scene_features.to_grid(coords)
        return {"xyz": coords[chosen].astype(np.float32), "q": grid[chosen],
                "features": feats[chosen].astype(np.float16),
                "meta": {"model_id": "3d-llm:voxelized_features_sam_nonzero", "revision": None,
                         "resolved_revision": None, "source": "3d-llm", "features_dir": str(self.scenes.features_dir),
                         **files, "num_points": int(self.cfg.num_points), "points_in_scene": int(len(feats)),
                         "points_sampled": int(len(chosen)),
                         "sampled_with_replacement": bool(len(feats) < int(self.cfg.num_points)),
                         "xyz_offset": [int(x) for x in offset], "xyz_scale": float(scale)}}

    def _lifted(self, video: dict) -> dict | str:
        """The depth-lifted point cloud (with its meta), or the reason there is none."""
        result = self._missing(video) or self.build(video["video_id"], np.asarray(video["maps"]["depth"]),
                                                     np.asarray(video["features"]["rgb"]))
        if not isinstance(result, str):
            result["meta"] = {**self.meta, **result["meta"]}
        return result

    def extract(self, video: dict) -> dict | str:
        """One video's point cloud: from its scene's 3D-LLM files when configured and present, else
        lifted from depth (unless `fallback: none`); a str is the reason there is none."""
        if self.scenes is None:
            return self._lifted(video)
        found = self.scenes.load(video, int(self.cfg.feature_dim))
        if not isinstance(found, str):
            return self.from_scene(video["video_id"], *found)
        if self.scenes.fallback == "none":
            return f"{found} (scene_features.fallback: none)"
        result = self._lifted(video)
        if not isinstance(result, str):
            result["meta"]["scene_features"] = f"{found}: lifted from depth instead"
        return result

    def __call__(self, batch: dict) -> dict:
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            try:
                result = self.extract(video)
            except scene_features.SceneFileError as exc:  # this scene's files only: listed, the rest goes on
                result = str(exc)
            if isinstance(result, str):
                video.setdefault("errors", []).append({"stage": self.cfg.name, "reason": result})
                continue
            video.setdefault("features", {})["pointcloud"] = result["features"]
            video["features"]["pointcloud_xyz"] = result["q"]
            video.setdefault("maps", {})["pointcloud"] = result["xyz"]
            video.setdefault("model_meta", {})[self.cfg.name] = result["meta"]
        return batch
