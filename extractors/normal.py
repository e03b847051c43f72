"""Surface-normal stage: camera-frame unit normals per stored frame.

Default backend `geometric`: normals from the depth stage's metric depth. Each pixel is
back-projected with the camera prior of extractors.geometry (field of view or explicit
intrinsics); the normal is the cross product of the surface tangents along the image rows and
columns (central differences), oriented towards the camera. Depth edges give noisy normals
(the tangent straddles two surfaces); `smooth_px` box-filters the points first to calm
sensor-like noise. CREMA used Bae et al.'s learned estimator; see docs/models.md for how the
two differ and for the learned option.

Adds maps.normal float32 [F, 3, H, W] (x right, y down, z forward; n . p < 0) and images.normal
uint8 [F, H, W, 3] (extractors.render.normal_to_image).
"""

from __future__ import annotations

import numpy as np

from extractors import geometry, render


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


class NormalExtractor:
    """Surface normals (and their renderings) for every stored frame with a depth map."""

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.backend != "geometric":
            raise ValueError(f"unknown normal backend {cfg.backend!r}; available: geometric")
        self.meta = {"model_id": "geometric:depth-cross-product", "revision": None, "resolved_revision": None,
                     "source": "depth", "fov_deg": float(cfg.fov_deg), "smooth_px": int(cfg.get("smooth_px") or 0)}

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """Per-video features this stage adds (none: normals only feed maps and images)."""
        return {}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    def __call__(self, batch: dict) -> dict:
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            depth = (video.get("maps") or {}).get("depth")
            if depth is None:
                video.setdefault("errors", []).append(
                    {"stage": self.cfg.name, "reason": "no depth map for this video (the depth stage did not produce one)"})
                continue
            normal = np.stack([normals_from_depth(d, self.cfg) for d in np.asarray(depth)])
            video.setdefault("maps", {})["normal"] = normal
            video.setdefault("images", {})["normal"] = render.normal_to_image(normal)
            meta = dict(self.meta)
            if "depth" in video.get("model_meta", {}):
                meta["depth_model_id"] = video["model_meta"]["depth"].get("model_id")
            video.setdefault("model_meta", {})[self.cfg.name] = meta
        return batch
