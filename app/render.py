"""Arrays -> pictures for the web app: frames and maps as images, token grids as heatmaps, the
point cloud as an interactive 3D scatter. Pure functions over numpy; no store or model access."""

from __future__ import annotations

import math

import numpy as np


def to_image(arr: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 image of a frame or a rendered map (float maps are min-max scaled)."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = ((a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 2:  # two-channel flow: magnitude as grey
        a = np.repeat(np.linalg.norm(a.astype(np.float32), axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    return a


def heatmap(values: np.ndarray, size: int = 128) -> np.ndarray:
    """A 2D array as a viridis image, upscaled (nearest) to about `size` px on its longer side."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    norm = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    rgb = (colormaps["viridis"](norm)[..., :3] * 255).astype(np.uint8)
    scale = max(1, size // max(v.shape))
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def token_grid(tokens: np.ndarray) -> np.ndarray:
    """[tokens, dim] encoder output -> a 2D map of token norms: the patch grid when the tokens are a
    square grid (after a leading CLS token), else the tokens x dims matrix itself."""
    t = np.asarray(tokens, dtype=np.float32)
    n = t.shape[0]
    for skip in (1, 0):
        side = math.isqrt(n - skip)
        if side > 1 and side * side == n - skip:
            return np.linalg.norm(t[skip:], axis=-1).reshape(side, side)
    return t


def feature_images(name: str, arr: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """(image, caption) per frame / chunk of one stored modality's features."""
    a = np.asarray(arr)
    if a.ndim == 3:  # [frames or chunks, tokens, dim]
        return [(heatmap(token_grid(x)), f"{name} {i}: token norms") for i, x in enumerate(a)]
    if a.ndim == 2:  # [points, dim]
        return [(heatmap(a[: min(len(a), 256)]), f"{name}: first points x dims")]
    return []


def point_cloud_figure(xyz: np.ndarray, title: str = "point cloud"):
    """An interactive (rotate, zoom) plotly 3D scatter of voxel coordinates, coloured by depth."""
    import plotly.graph_objects as go

    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    marker = {"size": 2, "color": xyz[:, 2], "colorscale": "Viridis"}
    fig = go.Figure(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 2], z=-xyz[:, 1], mode="markers", marker=marker))
    fig.update_layout(title=f"{title} ({len(xyz)} points, voxel coordinates)", height=420,
                      margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return fig
