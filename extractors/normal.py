"""Surface-normal stage: camera-frame unit normals per stored frame.

Backends (`cfg.backend`):
- `geometric` (default, no weights): normals from the depth stage's metric depth. Each pixel is
  back-projected with the camera prior of extractors.geometry (field of view or explicit
  intrinsics); the normal is the cross product of the surface tangents along the image rows
  and columns (central differences), oriented towards the camera. Depth edges give noisy
  normals (the tangent straddles two surfaces); `smooth_px` box-filters the points first.
- `learned`: a transformers normal-estimation model on the RGB frames, by default TIPSv2-DPT
  (`google/tipsv2-b14-dpt`, Tipsv2DptForNormalEstimation) with its own processor and
  post_process_normal_estimation. `axes` maps the model's XYZ to our camera frame.
CREMA used Bae et al.'s estimator, which no package ships; docs/models.md compares the options.

Adds maps.normal float32 [F, 3, H, W] (x right, y down, z forward; n . p < 0) and images.normal
uint8 [F, H, W, 3] (extractors.render.normal_to_image).
"""

from __future__ import annotations

import numpy as np

import torch

from core.hub import seeded, snapshot
from core.util import to_plain
from extractors import geometry, hub, render


def normals_from_depth(depth: np.ndarray, cfg) -> np.ndarray:
    """Depth [H, W] (metres) -> unit normals [3, H, W] facing the camera; zero where the depth
    (or a neighbour the tangents use) is invalid."""
    import cv2

    h, w = depth.shape
    fx, fy, cx, cy = geometry.intrinsics(h, w, cfg)
    valid = np.isfinite(depth) & (depth > 0)
    points = geometry.backproject(np.where(valid, depth, 0.0), fx, fy, cx, cy)
    k = int(cfg.get("smooth_px") or 0)
    if k > 1:
        points = np.stack([cv2.blur(c, (k, k), borderType=cv2.BORDER_REPLICATE) for c in points])
    d_dv = np.gradient(points, axis=1)  # along image rows (down)
    d_du = np.gradient(points, axis=2)  # along image columns (right)
    # right x down = +z (away from the camera) for a wall facing it, so down x right faces the camera.
    n = np.cross(d_dv, d_du, axis=0)
    n /= np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-12)
    away = (n * points).sum(axis=0) > 0
    n[:, away] *= -1.0
    # Tangents at a pixel use its 4-neighbours: any invalid one makes the normal meaningless.
    ok = valid.copy()
    ok[1:, :] &= valid[:-1, :]
    ok[:-1, :] &= valid[1:, :]
    ok[:, 1:] &= valid[:, :-1]
    ok[:, :-1] &= valid[:, 1:]
    n[:, ~ok] = 0.0
    return n.astype(np.float32)


def build_random(cfg):
    """A random-init normal model + processor from `cfg.random_init` (tests)."""
    import transformers
    from transformers import AutoConfig

    spec = to_plain(cfg.random_init)
    kwargs = dict(spec["model"])
    backbone = kwargs.pop("backbone_config", None)
    if backbone is not None:
        kwargs["backbone_config"] = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with seeded(cfg.seed):
        model = getattr(transformers, cfg.architecture)(config)
    return model, getattr(transformers, spec["processor_class"])(**spec["processor"])


def load_pretrained(cfg, dtype: torch.dtype, local_path: str | None):
    import transformers
    from transformers import AutoImageProcessor

    snap = snapshot(cfg.model_id, cfg.revision, local_path, allow_patterns=["*.json", "*.safetensors"],
                        config_key="features.extractors.normal.resources.local_path")
    model = getattr(transformers, cfg.architecture).from_pretrained(snap.path, dtype=dtype)
    return (model, AutoImageProcessor.from_pretrained(snap.path)), snap.meta()


class LearnedNormals:
    """Per-frame normals from a transformers model's own pre- and post-processing."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.dtype, self.batch_size, _ = hub.runtime(cfg)
        self.model, self.processor, meta = hub.load_model(cfg, build_random, load_pretrained)
        self.axes = torch.tensor([float(a) for a in cfg.axes]).view(3, 1, 1)
        self.meta = {**meta, "axes": [float(a) for a in cfg.axes]}

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB [F, H, W, 3] -> unit normals float32 [F, 3, H, W] in our camera frame."""
        out = []
        for _, outputs, sizes in hub.dense_predictions(self.model, self.processor, frames, batch_size=self.batch_size,
                                                       device=self.device, dtype=self.dtype, key="normals"):
            results = self.processor.post_process_normal_estimation(outputs, target_sizes=sizes)
            # The library normalises before its bilinear resize; blended unit vectors are shorter
            # than 1, so normalise again: maps.normal promises unit vectors.
            out += [(torch.nn.functional.normalize(r["normals"].float().cpu(), dim=0) * self.axes).numpy()
                    for r in results]
        return np.stack(out).astype(np.float32)


class NormalExtractor:
    """Surface normals (and their renderings) for every stored frame of every video."""

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.backend == "geometric":
            self.learned = None
            self.meta = {"model_id": "geometric:depth-cross-product", "revision": None, "resolved_revision": None,
                         "source": "depth", "fov_deg": float(cfg.fov_deg), "smooth_px": int(cfg.get("smooth_px") or 0)}
        elif cfg.backend == "learned":
            self.learned = LearnedNormals(cfg)
            self.meta = self.learned.meta
        else:
            raise ValueError(f"unknown normal backend {cfg.backend!r}; choose geometric or learned")

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """Per-video features this stage adds (none: normals only feed maps and images)."""
        return {}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    def _geometric(self, video: dict) -> np.ndarray | None:
        depth = (video.get("maps") or {}).get("depth")
        if depth is None:
            return None
        return np.stack([normals_from_depth(d, self.cfg) for d in np.asarray(depth)])

    def __call__(self, batch: dict) -> dict:
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            if self.learned is not None:
                normal = self.learned(np.asarray(video["frames"]))
            else:
                normal = self._geometric(video)
                if normal is None:
                    video.setdefault("errors", []).append(
                        {"stage": self.cfg.name,
                         "reason": "no depth map for this video (the depth stage did not produce one)"})
                    continue
            video.setdefault("maps", {})["normal"] = normal
            video.setdefault("images", {})["normal"] = render.normal_to_image(normal)
            meta = dict(self.meta)
            if self.learned is None and "depth" in video.get("model_meta", {}):
                meta["depth_model_id"] = video["model_meta"]["depth"].get("model_id")
            video.setdefault("model_meta", {})[self.cfg.name] = meta
        return batch
