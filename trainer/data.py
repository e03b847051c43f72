"""Training data: cached features from the store + the dataset's questions.

One sample = one question. Its video's stored frames (F per video) are sampled down to the
model's T frames -- a random frame in each of T equal segments at training, the segment midpoints
at evaluation -- with the SAME indices for every frame modality, so RGB, depth, flow and normals
stay aligned (the reference cropped and sampled each modality on its own). Randomness comes from
(seed, epoch, sample index) alone, so a resumed run sees exactly the frames it would have seen.

A modality missing for a video is handled by `missing`:
- "drop": the question is left out of that split;
- "zero": the sample keeps zero features for it, `present[m]` False, and the model zeroes and
  masks that modality's tokens.
Both are counted per split and modality (`QADataset.missing`) and logged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from core.features import modality_hashes
from core.modalities import FRAME, NAMES, get, kind
from core.schema import DatasetIndex, QARecord
from core.store import FeatureStore
from trainer.config import DataConfig, PromptConfig
from trainer.prompts import prompt_text, target_text


def sample_frames(num_stored: int, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of `num_frames` of `num_stored` frames: one per equal segment.

    rng given (training): a uniformly random frame inside each segment; None: each segment's
    midpoint. With fewer stored frames than segments, frames repeat.
    """
    if num_stored < 1:
        raise ValueError("a video with no stored frames")
    edges = np.linspace(0.0, num_stored, num_frames + 1)
    lo = np.minimum(np.floor(edges[:-1]).astype(np.int64), num_stored - 1)
    hi = np.maximum(lo + 1, np.floor(edges[1:]).astype(np.int64))  # exclusive
    if rng is None:
        mid = np.floor((edges[:-1] + edges[1:]) / 2).astype(np.int64)
        return np.clip(mid, lo, hi - 1)
    return rng.integers(lo, hi)


def sample_points(num_points: int, max_points: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Up to `max_points` point indices, sorted: a uniform random subset (training) or an evenly
    spaced one (evaluation). The reference took the head of a shuffled order incorrectly."""
    if num_points <= max_points:
        return np.arange(num_points)
    if rng is None:
        return np.linspace(0, num_points, max_points, endpoint=False).astype(np.int64)
    return np.sort(rng.choice(num_points, size=max_points, replace=False))


class QADataset(torch.utils.data.Dataset):
    """Questions of one split joined with their videos' cached features."""

    def __init__(self, store: FeatureStore, records: list[QARecord], modalities: list[str], *,
                 num_frames: int, train: bool, data: DataConfig, prompt: PromptConfig, split: str):
        absent = [m for m in modalities if m not in store.modalities]
        if absent:
            raise ValueError(f"store {store.root} has no {absent} features at all (it has "
                             f"{sorted(store.modalities)}); extract them or drop them from model.modalities")
        self.store, self.root = store, store.root
        self.hashes = {m: store.hashes[m] for m in modalities if m in store.hashes}
        self.modalities, self.num_frames, self.train = list(modalities), num_frames, train
        self.data, self.prompt, self.split, self.epoch = data, prompt, split, 0
        self.missing: Counter = Counter()   # modality -> questions whose video lacks it
        self.not_in_store = 0               # questions whose video failed extraction entirely
        kept = []
        for r in records:
            if r.video_id not in store:
                self.not_in_store += 1
                continue
            lacks = [m for m in self.modalities if not store.has(r.video_id, m)]
            self.missing.update(lacks)
            if lacks and data.missing == "drop":
                continue
            kept.append(r)
        self.records = kept
        self.dropped = len(records) - len(kept)

    def summary(self) -> dict:
        return {"split": self.split, "questions": len(self.records), "dropped": self.dropped,
                "not_in_store": self.not_in_store, "missing": dict(self.missing), "policy": self.data.missing}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self):  # DataLoader workers reopen the store themselves
        state = dict(self.__dict__)
        state["store"] = None
        return state

    def _store(self) -> FeatureStore:
        if self.store is None:
            self.store = FeatureStore(self.root, expected_hashes=self.hashes)
        return self.store

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        rng = np.random.default_rng([self.data.seed, self.epoch, index]) if self.train else None
        store = self._store()
        present = {m: store.has(r.video_id, m) for m in self.modalities}
        stored = {m: store.modalities[m]["shape"][0] for m in self.modalities if m in FRAME and present[m]}
        if len(set(stored.values())) > 1:
            raise ValueError(f"video {r.video_id}: frame modalities hold different numbers of stored frames "
                             f"{stored}; they must share frame indices (re-extract this video)")
        frames = sample_frames(next(iter(stored.values())), self.num_frames, rng) if stored else None
        # frame modalities: only the sampled frames are read (the store chunks them per frame)
        arrays = {m: (store.get(r.video_id, m, frames=frames) if m in FRAME else store.get(r.video_id, m))
                  if present[m] else None for m in self.modalities}
        feats, extra = {}, {}
        for m, arr in arrays.items():
            shape = store.modalities[m]["shape"]
            if m in FRAME:
                feats[m] = arr if arr is not None else np.zeros((self.num_frames, *shape[1:]), np.float16)
            elif kind(m) == "points" and arr is not None:
                keep = sample_points(arr.shape[0], self.data.max_points, rng)
                feats[m], extra["xyz"] = arr[keep], store.get(r.video_id, get(m).store_keys[1])[keep]  # its voxel xyz
            elif kind(m) == "points":  # one zero point: the Q-Former needs something to attend to
                feats[m], extra["xyz"] = np.zeros((1, shape[-1]), np.float16), np.zeros((1, 3), np.uint8)
            else:
                feats[m] = arr if arr is not None else np.zeros(shape, np.float16)
        return {"qid": r.qid, "video_id": r.video_id, "qtype": r.qtype, "question": r.question,
                "prompt": prompt_text(r, self.prompt), "target": target_text(r), "answer": r.answer,
                "answer_idx": -1 if r.answer_idx is None else r.answer_idx, "options": tuple(r.options),
                "features": feats, "present": present, **extra}


def collate(samples: list[dict]) -> dict:
    """Stack samples into the batch dict that `Crema.forward` / `Crema.predict` read."""
    out = {k: [s[k] for s in samples] for k in ("qid", "video_id", "qtype", "question", "prompt", "target",
                                                 "answer", "options")}
    out["answer_idx"] = torch.tensor([s["answer_idx"] for s in samples])
    out["num_options"] = torch.tensor([len(s["options"]) for s in samples])
    out["features"], out["present"], out["masks"], out["xyz"] = {}, {}, {}, {}
    for m in samples[0]["features"]:
        out["present"][m] = torch.tensor([s["present"][m] for s in samples])
        if kind(m) == "points":
            n = max(s["features"][m].shape[0] for s in samples)
            feats = torch.zeros(len(samples), n, samples[0]["features"][m].shape[-1], dtype=torch.float16)
            xyz = torch.zeros(len(samples), n, 3, dtype=torch.long)
            mask = torch.zeros(len(samples), n, dtype=torch.bool)
            for i, s in enumerate(samples):
                k = s["features"][m].shape[0]
                feats[i, :k] = torch.from_numpy(np.asarray(s["features"][m]))
                xyz[i, :k] = torch.from_numpy(np.asarray(s["xyz"], dtype=np.int64))
                mask[i, :k] = True
            out["features"][m], out["xyz"][m], out["masks"][m] = feats, xyz, mask
        else:
            out["features"][m] = torch.from_numpy(np.stack([np.asarray(s["features"][m]) for s in samples]))
    return out


class EpochSampler(torch.utils.data.Sampler):
    """This rank's part of the epoch's order (a permutation seeded by (seed, epoch), or in order),
    from the global sample position `start` on.

    Rank r of W takes the positions start + r, start + r + W, ...: with `start` at a step boundary
    (a multiple of the global batch, so of W), the questions one optimizer step sees are those
    the same step sees on any other number of ranks, and a position counted in samples resumes
    onto another W.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.size, self.shuffle, self.seed, self.rank, self.world = size, shuffle, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist()

    def __iter__(self):
        return iter(self.order()[self.start + self.rank::self.world])

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.size, self.world))


def rank_share(begin: int, end: int, rank: int, world: int) -> int:
    """How many of the global positions [begin, end) rank `rank` of `world` reads (EpochSampler's rule)."""
    return len(range(begin + rank, end, world))


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the batch's tensors (nested one level in dicts) to `device`."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def open_store(cfg, modalities=None) -> FeatureStore:
    """The run's feature store (`cfg.store`), refused unless each modality the model reads
    (`modalities`, default `cfg.model.modalities`) was written with `cfg.features` (one hash per
    modality: the store may hold more modalities than the model reads)."""
    names = list(modalities if modalities is not None else cfg.model.modalities)
    return FeatureStore(cfg.store, expected_hashes=modality_hashes(cfg.features, names))


def feature_widths(store: FeatureStore, modalities=None) -> dict:
    """vision_width / audio_width of the cached features, as the model config names them: the
    ViT token width (frame and point modalities) and the audio encoder's (clip modalities)."""
    widths = {}
    for key, kinds in (("vision_width", ("frame", "points")), ("audio_width", ("clip",))):
        found = {m: store.modalities[m]["shape"][-1] for m in NAMES
                 if kind(m) in kinds and m in store.modalities and (modalities is None or m in modalities)}
        if len(set(found.values())) > 1:
            raise ValueError(f"{store.root}: the Q-Former reads one token width, but the store's features are "
                             f"{found} wide (3D-LLM's scene features are 1408 wide: train them with "
                             f"features=full, or leave the other modalities out with model.modalities=[...])")
        if found:
            widths[key] = next(iter(found.values()))
    return widths


def split_datasets(index: DatasetIndex, store: FeatureStore, modalities: list[str], num_frames: int, *,
                   data: DataConfig, prompt: PromptConfig, splits=("train", "val", "test")) -> dict[str, "QADataset"]:
    """QADatasets per split from the dataset's loaded annotations."""
    return {s: QADataset(store, index.qa.get(s, []), modalities, num_frames=num_frames, train=s == "train",
                         data=data, prompt=prompt, split=s) for s in splits}


def own_generator() -> torch.Generator:
    """A DataLoader draws a seed from its generator per iterator; with the global one, that draw
    would shift the dropout masks of a resumed run. Our sampling never uses this generator."""
    return torch.Generator().manual_seed(0)


def eval_loader(ds, batch_size: int, num_workers: int, *, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """A split in order; with `world` > 1, rank `rank`'s share (every world-th question from
    `rank` on), so that the ranks together read each question exactly once."""
    part = ds if world == 1 else torch.utils.data.Subset(ds, range(rank, len(ds), world))
    return torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                       num_workers=num_workers, generator=own_generator())
