"""What the web app does, without the web: every browser action is one method here, taking and
returning plain values (paths as strings, tables as lists of rows), so it is testable without a
browser and the Gradio layer (app.web) stays a thin layout.

Every path that arrives from the browser passes `Roots.check` first; nothing here writes to a
store, a checkpoint or a dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app import explore, render
from app.predict import Asker, PredictError, frame_views, point_cloud
from app.roots import PathRefused, Roots
from core.hub import ModelUnavailableError
from core.store import STORE_META, FeatureStore, StoreError
from model.scoring import LETTERS
from trainer import checkpoint


class Backend:
    """The app's state: its roots, the features config, the dataset's question -> video map, and
    the checkpoints loaded so far (one model per checkpoint)."""

    def __init__(self, roots: Roots, features_cfg, *, qa_videos: dict[str, str] | None = None, device: str = "auto",
                 max_points: int = 1024):
        self.roots, self.features_cfg, self.device, self.max_points = roots, features_cfg, device, max_points
        self.qa_videos = qa_videos or {}
        self._askers: dict[Path, Asker] = {}

    # ------------------------------------------------------------------ choices offered to the browser

    def checkpoints(self) -> list[str]:
        """Under the `runs` root: each run's checkpoints folder (its best is used) and its best-* ones."""
        folders = self.roots.dirs("runs", "*checkpoints")
        bests = [p for p in self.roots.dirs("runs", "*checkpoints/best-*") if (p / checkpoint.STATE).exists()]
        return [str(p) for p in [*folders, *bests]]

    def videos(self) -> list[str]:
        """Video files under the `data` root."""
        exts = (".mp4", ".avi", ".mkv", ".webm", ".mov")
        return [str(p) for p in self.roots.files("data", "*") if p.suffix.lower() in exts]

    def stores(self) -> list[str]:
        """Feature stores (folders with a store.json) under the `stores` root."""
        return [str(p.parent) for p in self.roots.files("stores", f"*{STORE_META}")]

    def predictions(self) -> list[str]:
        """Eval predictions files (`<run_dir>/eval/<split>.json`) under the `runs` root."""
        return [str(p) for p in self.roots.files("runs", "*eval/*.json")]

    # ------------------------------------------------------------------ Ask

    def asker(self, ckpt: str) -> Asker:
        """The loaded model of checkpoint `ckpt` (a folder under the roots), loaded once."""
        if not ckpt:
            raise PredictError("pick a checkpoint (none found under the runs root: make train first)")
        directory = checkpoint.resolve(self.roots.check(ckpt), "best")
        if directory not in self._askers:
            self._askers[directory] = Asker.load(directory, self.features_cfg, device=self.device,
                                                 max_points=self.max_points)
        return self._askers[directory]

    def ask(self, video: str, question: str, options: list[str], ckpt: str) -> dict:
        """Extract `video` in this process, ask the checkpoint; the result plus what to show."""
        if not question or not str(question).strip():
            raise PredictError("type a question")
        if not video:
            raise PredictError("upload a video or pick one")
        path = self.roots.check(video)  # before anything is loaded: a refused path costs nothing
        asker = self.asker(ckpt)
        extracted = asker.extract(path)
        result = asker.ask(extracted, str(question).strip(), [o for o in options if o.strip()])
        return {"result": result, "views": self.frame_gallery(extracted), "cloud": point_cloud(extracted),
                "timings": extracted.get("timings", {})}

    @staticmethod
    def frame_gallery(video: dict) -> list[tuple[np.ndarray, str]]:
        """(image, caption) of every stored frame and its derived maps, frame by frame."""
        views = frame_views(video)
        out = []
        for i in range(len(views[0][1]) if views else 0):
            out += [(render.to_image(images[i]), f"{name} {int(video['frame_indices'][i])}") for name, images in views]
        return out

    @staticmethod
    def score_rows(result: dict) -> list[list]:
        return [[LETTERS[i], o, s] for i, (o, s) in enumerate(zip(result["options"], result.get("scores", [])))]

    @staticmethod
    def contribution_rows(result: dict) -> list[list]:
        """[modalities used, answer, score of the full answer's option] per composition."""
        def row(label, r):
            s = r.get("scores")
            return [label, r["answer"], round(s[result["choice"]], 4) if s and result["choice"] is not None else ""]
        rows = [row("all: " + "+".join(result["modalities"]), result)]
        rows += [row(f"{m} alone", r) for m, r in result["alone"].items()]
        rows += [row(f"without {m}", r) for m, r in result["without"].items()]
        return rows

    # ------------------------------------------------------------------ Explore

    def open_store(self, store: str) -> FeatureStore:
        return FeatureStore(self.roots.check(store))

    def store_overview(self, store: str) -> tuple[str, list[list[str]]]:
        """(report markdown, the video table) of a store."""
        root = self.roots.check(store)
        return explore.report_markdown(root), explore.video_table(root)

    def video_detail(self, store: str, video_id: str) -> dict:
        """Status, reason, every stored modality rendered with its stats, and the point cloud."""
        root = self.roots.check(store)
        failures = explore.video_failure(root, video_id)
        fs = FeatureStore(root)
        detail = {"video_id": video_id, "failures": failures, "images": [], "stats": [], "cloud": None, "meta": {}}
        if video_id not in fs:
            detail["status"] = "failed" if failures else "not in store"
            return detail
        detail["status"] = "missing modality" if failures else "ok"
        meta = fs.meta(video_id)
        detail["meta"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in meta.items()
                          if k in ("fps", "num_frames", "decoder", "size", "frame_indices", "timestamps")}
        for name, arr in explore.stored_modalities(fs, video_id).items():
            if name == "pointcloud_xyz":
                detail["cloud"] = arr
                continue
            detail["stats"].append([name, *explore.modality_stats(arr).values()])
            detail["images"] += render.feature_images(name, arr)
        for name, arr in explore.raw_maps(fs, video_id).items():
            detail["images"] += [(render.to_image(x), f"raw {name} {i}") for i, x in enumerate(arr)]
        return detail

    def questions(self, predictions: str, video_id: str, qtype: str = "all", correct: str = "all") -> list[list]:
        if not predictions:
            return []
        return explore.eval_rows(self.roots.check(predictions), self.qa_videos, video_id, qtype=qtype, correct=correct)


USER_ERRORS = (PredictError, PathRefused, StoreError, checkpoint.CheckpointError, FileNotFoundError, KeyError,
               ValueError, json.JSONDecodeError, ModelUnavailableError)
