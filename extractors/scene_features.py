"""3D-LLM's per-scene point features, read as the point-cloud stage's source (SQA3D, as CREMA did).

3D-LLM's ScanNet release holds, per scene (row i of one file is the point of row i of the other):
    <features_dir>/<scene_id>.pt    float tensor [N, D], D = 1408 (BLIP-2 ViT-g's width)
    <voxels_dir>/<scene_id>.npy     [N, 3] integer voxel coordinates on 3D-LLM's grid

The model gives each axis a table of 256 positions (3D-LLM and CREMA index theirs with the file's
values as they are), so coordinates become uint8 0..255 by one deterministic rule per scene,
computed over all N points before sampling (the mapping never depends on the sample):
1. a scene already inside 0..255 keeps its coordinates: exactly what 3D-LLM and CREMA feed;
2. otherwise it is translated so that each axis starts at 0 (a pure shift keeps the voxel size);
3. if its largest extent still exceeds 255, every axis is scaled by ONE factor 255 / extent and
   rounded: the scene keeps its proportions (neighbouring voxels may merge), where clipping would
   flatten everything beyond 255 onto one plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.hub import ModelUnavailableError

ID_FROM = ("video_id", "path_stem")
FALLBACKS = ("depth", "none")
FOLDERS = ("required", "optional")
GRID = 256  # positions per axis of the model's voxel position table

log = logging.getLogger(__name__)


class SceneFeaturesUnavailable(ModelUnavailableError):
    """The configured scene-feature folders are unusable: the run stops with this message."""


class SceneFileError(ValueError):
    """A scene file that exists but does not hold what 3D-LLM's release holds; names the file."""


class WidthError(SceneFileError):
    """Features of another width than the configured feature_dim."""


def read_features(path: Path, dim: int, *, mmap: bool = False) -> np.ndarray:
    """<scene_id>.pt -> float32 [N, dim]; a SceneFileError naming the file otherwise."""
    import torch

    try:
        tensor = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as exc:
        raise SceneFileError(f"{path}: cannot be read as a tensor with torch.load(weights_only=True): {exc}") from None
    if not isinstance(tensor, torch.Tensor):
        raise SceneFileError(f"{path}: holds a {type(tensor).__name__}, expected a float tensor [N, {dim}]")
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise SceneFileError(f"{path}: holds a {tensor.dtype} tensor of shape {list(tensor.shape)}, "
                             f"expected a float tensor [N, {dim}]")
    if tensor.shape[1] != dim:
        raise WidthError(f"{path}: features are {tensor.shape[1]} wide but pointcloud.feature_dim is {dim} "
                             f"(the width of the encoder composed beside the stage; 3D-LLM's features are BLIP-2 "
                             f"ViT-g's 1408: use features=full)")
    if mmap:
        return tensor  # a shape check only; the rows stay on disk
    if not bool(torch.isfinite(tensor).all()):
        raise SceneFileError(f"{path}: holds non-finite feature values (NaN or inf)")
    return tensor.detach().to(torch.float32).numpy()


def read_voxels(path: Path, num_points: int) -> np.ndarray:
    """<scene_id>.npy -> int64 [N, 3] (N from the features file); a SceneFileError naming the file otherwise."""
    try:
        coords = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SceneFileError(f"{path}: cannot be read with numpy.load(allow_pickle=False): {exc}") from None
    if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.number):
        raise SceneFileError(f"{path}: holds a {coords.dtype} array of shape {list(coords.shape)}, expected [N, 3] "
                             "voxel coordinates")
    if coords.shape[0] != num_points:
        raise SceneFileError(f"{path}: has {coords.shape[0]} points but its features file has {num_points}; "
                             "row i of one must be the point of row i of the other")
    if not np.isfinite(coords).all() or not np.array_equal(coords, np.round(coords)):
        raise SceneFileError(f"{path}: voxel coordinates must be finite integers")
    return coords.astype(np.int64)


def to_grid(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """int [N, 3] voxel coordinates -> (uint8 [N, 3], offset [3], scale) with q = round((c - offset) * scale);
    the rule is the module docstring's."""
    low, high = coords.min(axis=0), coords.max(axis=0)
    if low.min() >= 0 and high.max() < GRID:
        return coords.astype(np.uint8), np.zeros(3, np.int64), 1.0
    extent = int((high - low).max())
    scale = 1.0 if extent < GRID else (GRID - 1) / extent
    q = np.floor((coords - low) * scale + 0.5)
    return np.clip(q, 0, GRID - 1).astype(np.uint8), low, scale


@dataclass(frozen=True)
class SceneSource:
    """Where a video's scene files are, and what to do when its scene has none."""

    features_dir: Path
    voxels_dir: Path
    id_from: str
    fallback: str

    @classmethod
    def from_cfg(cls, node, dim: int, resources=None) -> "SceneSource | None":
        """The stage's `scene_features` node (None: the stage lifts depth, as without it); the
        folders come from the stage's `resources` (machine paths, like local_path: not hashed)."""
        if not node:
            return None
        if node.get("id_from", "video_id") not in ID_FROM:
            raise ValueError(f"pointcloud.scene_features.id_from must be one of {ID_FROM}, got {node.get('id_from')!r}")
        if node.get("fallback", "depth") not in FALLBACKS:
            raise ValueError(f"pointcloud.scene_features.fallback must be one of {FALLBACKS}, "
                             f"got {node.get('fallback')!r}")
        folders = node.get("folders", "required")
        if folders not in FOLDERS:
            raise ValueError(f"pointcloud.scene_features.folders must be one of {FOLDERS}, got {folders!r}")
        dirs, resources = {}, resources or {}
        absent = [k for k in ("features_dir", "voxels_dir") if not resources.get(k) or not Path(resources[k]).is_dir()]
        if absent and folders == "optional":
            # the dataset's default: a folder without 3D-LLM's release is lifted from depth (fallback
            # depth), or every scene is listed without its point cloud (fallback none)
            log.warning("3D-LLM scene features: %s not found (%s); %s", ", ".join(absent),
                        ", ".join(str(resources.get(k)) for k in absent),
                        "every scene is lifted from depth" if node.get("fallback", "depth") == "depth"
                        else "every scene is listed without a point cloud")
            if node.get("fallback", "depth") == "depth":
                return None
            return cls(Path(str(resources.get("features_dir"))), Path(str(resources.get("voxels_dir"))),
                       node.get("id_from", "video_id"), "none")
        for key in ("features_dir", "voxels_dir"):
            if key in absent:
                raise SceneFeaturesUnavailable(
                    f"3D-LLM scene features: {key} {resources.get(key)!r} is not a folder. Put 3D-LLM's "
                    f"voxelized_features_sam_nonzero_preprocess/ and voxelized_voxels_sam_nonzero_preprocess/ under "
                    f"the dataset root (DATA=...) or set features.extractors.pointcloud.resources.{key}=<folder>")
            dirs[key] = Path(resources[key])
        source = cls(dirs["features_dir"], dirs["voxels_dir"], node.get("id_from", "video_id"),
                     node.get("fallback", "depth"))
        source.check_width(dim)
        return source

    def check_width(self, dim: int) -> None:
        """Refuse a feature_dim that the release's files do not have (read from the first file's header)."""
        first = next(iter(sorted(self.features_dir.glob("*.pt"))), None)
        if first is None:
            return
        try:
            read_features(first, dim, mmap=True)
        except WidthError as exc:
            raise SceneFeaturesUnavailable(str(exc)) from None
        except SceneFileError:
            pass  # an unreadable first file is its scene's problem, listed when that video comes

    def scene_id(self, video: dict) -> str:
        return Path(video["path"]).stem if self.id_from == "path_stem" else video["video_id"]

    def paths(self, scene_id: str) -> tuple[Path, Path]:
        return self.features_dir / f"{scene_id}.pt", self.voxels_dir / f"{scene_id}.npy"

    def load(self, video: dict, dim: int) -> tuple[np.ndarray, np.ndarray, dict] | str:
        """(features float32 [N, dim], voxel ints [N, 3], provenance) of the video's scene, or the
        reason there are none (no .pt: the stage falls back or lists it)."""
        feats_path, voxels_path = self.paths(self.scene_id(video))
        if not feats_path.is_file():
            return f"no 3D-LLM scene features: {feats_path} does not exist"
        if not voxels_path.is_file():
            raise SceneFileError(f"{voxels_path}: missing, but its scene has features ({feats_path})")
        feats = read_features(feats_path, dim)
        if len(feats) == 0:
            raise SceneFileError(f"{feats_path}: holds no points")
        coords = read_voxels(voxels_path, len(feats))
        return feats, coords, {"features_file": str(feats_path), "voxels_file": str(voxels_path)}
