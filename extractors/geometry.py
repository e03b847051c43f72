"""Pinhole camera helpers shared by the normal and point-cloud stages.

Videos in the wild carry no calibration, so both stages assume a pinhole camera with the
principal point at the image centre and a horizontal field of view from config (a prior), unless
the config gives explicit intrinsics. Both stages use the same rule, so normals and points agree.
"""

from __future__ import annotations

import math

import numpy as np


def intrinsics(height: int, width: int, cfg) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels for an image of this size.

    `cfg.intrinsics` ({fx, fy, cx, cy}, for the source resolution) wins when set; otherwise
    `cfg.fov_deg` is the horizontal field of view and pixels are square.
    """
    explicit = cfg.get("intrinsics")
    if explicit:
        return float(explicit["fx"]), float(explicit["fy"]), float(explicit["cx"]), float(explicit["cy"])
    fx = (width / 2.0) / math.tan(math.radians(float(cfg.fov_deg)) / 2.0)
    # Pixel centres: pixel u covers [u, u+1), so the optical axis passes through (W-1)/2.
    return fx, fx, (width - 1) / 2.0, (height - 1) / 2.0


def backproject(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Depth [H, W] (metres along the optical axis) -> points [3, H, W] in the camera frame
    (x right, y down, z forward)."""
    h, w = depth.shape
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    z = depth.astype(np.float32)
    return np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z])
