"""Turn derived maps into the 3-channel uint8 images the frozen image encoder sees.

CREMA feeds depth, flow and normals to the same ViT as RGB, as ordinary pictures. How they are
drawn is therefore part of the features: these functions are the one place that decides it
(the preview script uses them too, so what you look at is what was encoded).
"""

from __future__ import annotations

import numpy as np
import torch


def depth_to_image(depth: np.ndarray, *, cmap: str = "gray_r", low_pct: float = 2.0,
                   high_pct: float = 98.0) -> np.ndarray:
    """Depth [F, H, W] (metres) -> uint8 [F, H, W, 3], near = bright with the default `gray_r`.

    The range is one robust percentile window per video, not per frame, so an object that
    approaches the camera gets brighter across frames instead of being re-normalised away.
    Invalid depth (<= 0 or not finite) is drawn as the far end.
    """
    import matplotlib

    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [low_pct, high_pct])
    else:
        lo, hi = 0.0, 1.0
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    scaled[~valid] = 1.0
    rgba = matplotlib.colormaps[cmap](scaled)  # float64 [F, H, W, 4] in [0, 1]
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """Flow [F, 2, H, W] (dx, dy in pixels) -> uint8 [F, H, W, 3] with the standard colour wheel
    (Baker et al. / Middlebury, as torchvision and UniMatch draw it): hue = direction,
    saturation = speed relative to the fastest pixel of that frame."""
    from torchvision.utils import flow_to_image as wheel

    frames = [wheel(torch.from_numpy(np.ascontiguousarray(f, np.float32))) for f in np.asarray(flow)]
    return np.stack([f.permute(1, 2, 0).numpy() for f in frames]).astype(np.uint8)


def normal_to_image(normal: np.ndarray) -> np.ndarray:
    """Unit normals [F, 3, H, W] in the camera frame (x right, y down, z forward, facing the
    camera) -> uint8 [F, H, W, 3] as (n + 1) / 2 * 255 in the usual normal-map convention
    (x right, y up, z towards the viewer), so a wall facing the camera is lavender (128, 128, 255)
    like the maps of Bae et al. and Omnidata."""
    n = np.asarray(normal, np.float32)
    view = np.stack([n[:, 0], -n[:, 1], -n[:, 2]], axis=-1)
    return np.round((np.clip(view, -1.0, 1.0) + 1.0) * 0.5 * 255.0).astype(np.uint8)
