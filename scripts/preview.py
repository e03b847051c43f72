# make preview DATASET=demo ARGS="preview.video=demo_0003"
"""Render one video's frames and its depth, flow, normal and point-cloud views side by side (PNG)."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from core.features import resolve_features
from core.modalities import BASE, FRAME
from core.schema import VideoEntry, safe_video_id
from core.store import ShardSpec
from pipeline.graph import DecodeStage, ExtractorStage, initial_payload


def pick_video(cfg: DictConfig) -> VideoEntry:
    """The video named by preview.video (an id of the dataset or a file path), else the first one."""
    wanted = cfg.preview.video
    if wanted and Path(str(wanted)).exists():
        return VideoEntry(safe_video_id(Path(str(wanted)).stem), str(wanted), "preview")
    from core.datasets import load_dataset
    from pipeline.demo import ensure_demo

    ensure_demo(cfg.dataset)
    videos = load_dataset(cfg.dataset).videos
    if not videos:
        raise SystemExit(f"dataset {cfg.dataset.name} lists no videos")
    if wanted is None:
        return videos[0]
    for v in videos:
        if v.video_id == str(wanted):
            return v
    raise SystemExit(f"no video {wanted!r} in dataset {cfg.dataset.name} (ids look like {videos[0].video_id!r}), "
                     f"and no such file")


def run_stages(cfg: DictConfig, entry: VideoEntry) -> dict:
    """Decode and extract one video with the configured stages, in this process (no Ray)."""
    features = resolve_features(cfg.features)
    payload = initial_payload(ShardSpec("preview", "preview", (entry.video_id,)), [entry])
    payload = DecodeStage(features["decode"]).run(payload)
    for name, ext in features["extractors"].items():
        payload = ExtractorStage(name, ext).run(payload)
    return payload["videos"][0]


def random_stages(cfg: DictConfig) -> list[str]:
    """The stages that run with random-init weights (tiny presets): their views show the machinery,
    not real depth, flow or normals, and the picture must say so."""
    return [name for name, ext in resolve_features(cfg.features)["extractors"].items() if ext.get("random_init")]


def caption(video: dict, random: list[str]) -> str:
    """The figure's title: the video, its decoding, what is missing, and which stages are random."""
    lines = [f"{video['video_id']}  ({video['decoder']}, {video['num_frames']} frames @ {video['fps']:.1f} fps)"]
    if random:
        lines.append(f"RANDOM-INIT weights (tiny preset) in {', '.join(random)}: not real estimates; "
                     f"FEATURES=full for the real models")
    errors = "; ".join(f"{e['stage']}: {e['reason']}" for e in video["errors"])
    if errors:
        lines.append(f"missing: {errors[:150]}")
    return "\n".join(lines)


def _point_cloud(ax, xyz: np.ndarray) -> None:
    # voxel y grows downwards (image rows): plot height = 255 - y so up is up and the axis reads 0..255
    ax.scatter(xyz[:, 0], xyz[:, 2], 255 - xyz[:, 1], s=1, c=xyz[:, 2], cmap="viridis")
    ax.set(xlabel="x", ylabel="depth", zlabel="height", zlim=(0, 255))
    ax.set_title(f"point cloud\n{len(xyz)} pts, voxel coords", fontsize=9, pad=12)


def render(video: dict, rows: int, png: Path, random: list[str] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = video["frames"]
    rows = min(rows, len(frames))
    picks = np.linspace(0, len(frames) - 1, rows).round().astype(int)
    views = [(BASE, lambda i: frames[i])]
    for name in FRAME:  # the rendered images of the derived frame modalities
        if name != BASE and name in video["images"]:
            views.append((name, lambda i, n=name: video["images"][n][i]))
    has_pc = "pointcloud_xyz" in video["features"]
    cols = len(views) + int(has_pc)
    fig = plt.figure(figsize=(3 * cols, 2.4 * rows))
    for r, i in enumerate(picks):
        for c, (name, get) in enumerate(views):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(get(i))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(f"frame {int(video['frame_indices'][i])}\nt={video['timestamps'][i]:.2f}s")
    if has_pc:
        _point_cloud(fig.add_subplot(1, cols, cols, projection="3d"), video["features"]["pointcloud_xyz"].astype(float))
    fig.suptitle(caption(video, list(random)))
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


@hydra.main(version_base="1.3", config_path="../conf", config_name="preview")
def main(cfg: DictConfig) -> None:
    entry = pick_video(cfg)
    video = run_stages(cfg, entry)
    if video["failed"]:
        raise SystemExit(f"{entry.video_id}: {video['failed']['stage']} failed: {video['failed']['reason']}")
    print(f"wrote {render(video, int(cfg.preview.frames), Path(cfg.preview.png), random_stages(cfg))}")


if __name__ == "__main__":
    main()
