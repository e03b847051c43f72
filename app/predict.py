"""Ask a trained checkpoint about ONE video: extraction in this process, then the model.

The video goes through the pipeline's own decode and extractor stages (pipeline.graph, the same
classes the Ray actors run), with the `features` config the checkpoint was trained on (refused
otherwise: the per-modality hashes must equal the checkpoint's). The extracted features then take
the trainer's own sampling path (trainer.data.QADataset over an in-memory store of this one
video, then collate), so the model sees exactly what evaluation would have fed it from a store.

    >>> asker = Asker.load("outputs/train/demo/checkpoints", features_cfg, device="cpu")
    >>> video = asker.extract("data/demo/videos/demo_0003.mp4")
    >>> asker.ask(video, "which way does it move?", ["left", "right", "up", "down", "it does not move"])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.features import modality_hashes, resolve_features
from core.modalities import FRAME, get
from core.schema import QARecord, VideoEntry, safe_video_id
from core.store import ShardSpec
from core.util import pick_device, to_plain
from core.weights import make_hint, preflight
from extractors.weights import features_weights
from model.crema import Crema
from model.scoring import LETTERS
from model.weights import crema_weights
from trainer import checkpoint
from trainer.config import DataConfig, PromptConfig
from trainer.data import QADataset, collate, to_device
from trainer.evaluate import autocast, load_for_eval
from pipeline.graph import DecodeStage, ExtractorStage, initial_payload


class PredictError(RuntimeError):
    """A user error of predict (bad video, checkpoint, features config or options): one line."""


def features_for(features_cfg, modalities: list[str]) -> dict:
    """The `features` node with its modalities set to the model's, as plain data."""
    feats = to_plain(features_cfg)
    return {**feats, "modalities": list(modalities)}


def check_features(directory: Path, state: dict, features: dict, modalities: list[str]) -> dict[str, str]:
    """The per-modality hashes of `features`; PredictError naming every modality whose hash
    differs from the one the checkpoint was trained on (a features preset or override mismatch)."""
    mine = modality_hashes(features, modalities)
    trained = state.get("feature_hashes", {})
    differ = [f"{m} (trained {trained.get(m, '<none>')}, here {mine[m]})" for m in modalities
              if trained.get(m) != mine[m]]
    if differ:
        raise PredictError(f"checkpoint {directory} was trained on other features than features="
                           f"{features.get('preset', '?')} computes: {', '.join(differ)}; pass the features preset "
                           f"and overrides of its extraction run (e.g. FEATURES=tiny or FEATURES=full)")
    return mine


class MemoryStore:
    """One extracted video seen through the read API the trainer's QADataset uses (has / get /
    modalities / hashes), so the sampling of frames and points is the trainer's own code."""

    def __init__(self, video: dict, hashes: dict[str, str]):
        self.video_id = video["video_id"]
        self.root = Path(f"<memory:{self.video_id}>")
        self.arrays = {k: np.asarray(v) for k, v in video["features"].items()}
        self.hashes = dict(hashes)
        self.modalities = {k: {"shape": tuple(a.shape), "dtype": str(a.dtype)} for k, a in self.arrays.items()}

    def __contains__(self, video_id: str) -> bool:
        return video_id == self.video_id

    def has(self, video_id: str, modality: str) -> bool:
        return video_id == self.video_id and modality in self.arrays

    def get(self, video_id: str, modality: str, frames=None) -> np.ndarray:
        arr = self.arrays[modality]
        return arr if frames is None else arr[np.asarray(frames, dtype=np.int64)]


@dataclass
class Asker:
    """A loaded checkpoint + the features config it was trained on, ready to extract and ask."""

    model: Crema
    prompt: PromptConfig
    directory: Path
    features: dict
    hashes: dict[str, str]
    data: DataConfig
    device: torch.device

    @classmethod
    def load(cls, ckpt: str | Path, features_cfg, *, device: str = "auto", max_points: int = 1024) -> "Asker":
        """Resolve and verify the checkpoint (checksums, as eval does), build its model, and check
        that `features_cfg` computes the features it was trained on."""
        try:
            directory = checkpoint.resolve(ckpt, "best")
            check_weights(directory, features_cfg)
            dev = pick_device(device)
            model, prompt, state = load_for_eval(directory, dev)
        except (checkpoint.CheckpointError, FileNotFoundError) as err:
            raise PredictError(f"checkpoint {ckpt}: {err}") from err
        features = features_for(features_cfg, model.modalities)
        hashes = check_features(directory, state, features, model.modalities)
        data = DataConfig(missing="zero", max_points=max_points, num_workers=0, seed=0)
        return cls(model, prompt, directory, features, hashes, data, dev)

    def extract(self, path: str | Path) -> dict:
        """Decode and extract one video file in this process with the checkpoint's features config;
        the payload's video dict (frames, rendered maps, features, errors, timings)."""
        path = Path(path)
        if not path.is_file():
            raise PredictError(f"video {path}: no such file; give a video file path (VIDEO=...)")
        return extract_video(path, self.features)

    def ask(self, video: dict, question: str, options=()) -> dict:
        """The answer with every modality, option scores, and the answer with each modality alone
        and each left out; JSON-able."""
        if video["failed"]:
            raise PredictError(f"video {video['path']}: {video['failed']['stage']} failed: {video['failed']['reason']}")
        options = [str(o) for o in options]
        if len(options) > len(LETTERS):
            raise PredictError(f"{len(options)} options given; at most {len(LETTERS)}")
        t0 = time.perf_counter()
        batch = self.batch(video, question, options)
        mods = self.model.modalities
        full = self._answer(batch, mods)
        result = {"video": str(video["path"]), "video_id": video["video_id"], "question": question,
                  "options": options, "checkpoint": str(self.directory), "modalities": mods,
                  "missing": [m for m in mods if not bool(batch["present"][m][0])], **full,
                  "alone": {}, "without": {}}
        if len(mods) > 1:
            result["alone"] = {m: self._answer(batch, [m]) for m in mods}
            result["without"] = {m: self._answer(batch, [o for o in mods if o != m]) for m in mods}
        result["seconds"] = {"extract": round(sum(video.get("timings", {}).values()), 3),
                             "model": round(time.perf_counter() - t0, 3)}
        return result

    def batch(self, video: dict, question: str, options: list[str]) -> dict:
        """The one-question batch, built by the trainer's dataset and collate from the features."""
        store = MemoryStore(video, self.hashes)
        record = QARecord(qid="ask", video_id=video["video_id"], split="predict", question=question,
                          answer=options[0] if options else "", options=tuple(options), answer_idx=0 if options else None)
        ds = QADataset(store, [record], self.model.modalities, num_frames=self.model.config.num_frames, train=False,
                       data=self.data, prompt=self.prompt, split="predict")
        return to_device(collate([ds[0]]), self.device)

    def _answer(self, batch: dict, modalities: list[str]) -> dict:
        with autocast(self.device, True):
            pred = self.model.predict(batch, modalities=modalities)[0]
            scores = option_scores(self.model, batch, modalities)
        out = {"answer": pred["text"], "choice": pred["choice"]}
        if scores is not None:
            out["scores"] = scores
        return out


@torch.no_grad()
def option_scores(model: Crema, batch: dict, modalities: list[str]) -> list[float] | None:
    """Softmax over a multiple-choice question's options of the scores `Crema.predict` ranks
    (letter logits or option-text likelihoods, per `choice_scoring`); None when open-ended."""
    n = int(batch["num_options"][0])
    if n == 0:
        return None
    raw = model.choice_scores(batch, modalities=modalities)[0, :n]
    return [round(float(p), 4) for p in torch.softmax(raw.float(), dim=0)]


def check_weights(directory: Path, features_cfg) -> None:
    """The weights preflight of train/eval/extract, for what asking this checkpoint loads: its
    frozen model parts and the extractor models of its modalities. WeightsMissingError (one
    message naming every missing model and its download command) before anything is built."""
    model_config = checkpoint.read_state(directory).get("model_config") or {}
    modalities = list(model_config.get("modalities") or [])
    needed = crema_weights(model_config, user="predict")
    if modalities:
        needed += features_weights(resolve_features(features_for(features_cfg, modalities)))
    preflight(needed, make_hint=make_hint())


def extract_video(path: Path, features: dict) -> dict:
    """One video through the decode stage and every extractor stage the modalities need, in this
    process (no Ray); the video dict with its timings per stage."""
    resolved = resolve_features(features)
    entry = VideoEntry(safe_video_id(path.stem), str(path), "predict")
    payload = initial_payload(ShardSpec("predict", "predict", (entry.video_id,)), [entry])
    timings = {}
    t0 = time.perf_counter()
    payload = DecodeStage(resolved["decode"]).run(payload)
    timings["decode"] = time.perf_counter() - t0
    for name, ext in resolved["extractors"].items():
        t0 = time.perf_counter()
        payload = ExtractorStage(name, ext).run(payload)
        timings[name] = time.perf_counter() - t0
    video = payload["videos"][0]
    video["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return video


def describe(result: dict) -> list[str]:
    """Human-readable lines of a result (the JSON line follows them)."""
    letters = LETTERS
    lines = [f"video: {result['video']}", f"question: {result['question']}",
             f"answer: {result['answer']}" + (f" (option {letters[result['choice']]})" if result["choice"] is not None else "")]
    if result.get("missing"):
        lines.append(f"missing modalities (zeroed): {', '.join(result['missing'])}")
    if "scores" in result:
        lines += [f"  {letters[i]}. {o:<30} {s:6.3f}" for i, (o, s) in enumerate(zip(result["options"], result["scores"]))]
    for label, group in (("alone", result["alone"]), ("left out", result["without"])):
        for m, r in group.items():
            lines.append(f"{m} {label}: {r['answer']}")
    if "seconds" in result:
        lines.append(f"seconds: extraction {result['seconds']['extract']:.2f}, model {result['seconds']['model']:.2f}")
    return lines


def frame_views(video: dict) -> list[tuple[str, list[np.ndarray]]]:
    """[(modality, images per stored frame)] for the frames and the rendered derived maps."""
    views = [("rgb", list(np.asarray(video["frames"])))] if video.get("frames") is not None else []
    for name in FRAME:
        if name != "rgb" and name in video.get("images", {}):
            views.append((name, list(np.asarray(video["images"][name]))))
    return views


def point_cloud(video: dict) -> np.ndarray | None:
    """The voxel xyz of the video's point cloud, if it was extracted."""
    xyz = video.get("features", {}).get(get("pointcloud").store_keys[1])
    return None if xyz is None else np.asarray(xyz)
