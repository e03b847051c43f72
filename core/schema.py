"""The records every part of the project agrees on.

Dataset adapters produce `VideoEntry` and `QARecord`; the Ray graph moves one *shard payload*
(a plain dict: pickled once per hop in the per-stage plan, not at all in the fused plan) through
the stages; the store writes it. After each stage the fields no later stage reads leave it
(pipeline.graph.drop_plan).

Shard payload (what an extractor's ``__call__(batch) -> batch`` receives and returns)::

    {
      "shard_id": "train-00003", "split": "train",
      "videos": [video, ...],           # in shard order; never reordered or dropped by a stage
      "timings": {stage_name: seconds},  # accumulated by the stage runner
      "hops": {stage_name: bytes},       # array bytes each stage handed on (the marker keeps them)
    }

A ``video`` dict holds (keys are added stage by stage):

    video_id, path, start, end, streams             from the manifest (streams: {modality: path})
    failed: None | {"stage", "reason"}              set => no record is written for this video;
                                                    stages skip videos whose "failed" is set
    errors: [{"stage", "reason"}]                   a modality missing for this video (audio-less,
                                                    flow of a one-frame video, an extractor error);
                                                    the rest of the record is written
    frames: uint8 [F, H, W, 3]                      RGB at the stored frame indices
    next_frames: uint8 [F, H, W, 3] | None          the source frame after each stored frame (for flow)
    frame_indices: int64 [F], timestamps: float64 [F], fps, num_frames, decoder, size ([H, W] stored)
    audio: float32 [S] | None (16 kHz mono), audio_sr
    maps: {"depth": float32 [F, H, W] (metres), "flow": float32 [F, 2, H, W] (dx, dy pixels),
           "normal": float32 [F, 3, H, W] (unit, camera frame)}
    images: {"depth" | "flow" | "normal": uint8 [F, H, W, 3]}   rendered for the image encoder;
            {"touch" | "thermal": uint8 [F, H', W', 3]}         a sensor stream's frames at the RGB timestamps
    features: {"rgb" | "depth" | "flow" | "normal": float16 [F, tokens, dim],
               "audio": float16 [chunks, tokens, dim],
               "pointcloud": float16 [P, dim], "pointcloud_xyz": uint8 [P, 3]}
    model_meta: {modality: {"model_id": ..., "revision": ..., ...}}
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")

# Letters and digits of any script stay (a user reads `ü.mp4` as such); separators, whitespace,
# controls and path characters do not.
_ID_UNSAFE = re.compile(r"[^\w.-]+")
# Bytes, not characters: a raw map is stored under raw/<video_id>/, and filesystems cap a name at
# 255 bytes; 120 leaves room for Zarr's and the temporaries' own suffixes.
MAX_ID_BYTES = 120
_HASH_LEN = 8


def _id_hash(raw: str) -> str:
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


def _cap(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def safe_video_id(raw: str) -> str:
    """A deterministic, filesystem- and Zarr-safe id derived from a dataset's own video id.

    Ids that are already safe (letters and digits of any script, `.`, `_`, `-`; NFC; at most
    MAX_ID_BYTES bytes) are kept verbatim so users recognise them. Any other id, including one
    that differs only by surrounding whitespace, gets its unsafe runs replaced, is cut to length,
    and carries a short hash of the exact original: two distinct raw ids never share an id.
    """
    raw = str(raw)
    if not raw.strip():
        raise ValueError(f"empty video id {raw!r}")
    cleaned = _ID_UNSAFE.sub("_", unicodedata.normalize("NFC", raw)).strip("._") or "video"
    if cleaned == raw and len(raw.encode("utf-8")) <= MAX_ID_BYTES and not raw.startswith("__"):
        return raw
    return f"{_cap(cleaned, MAX_ID_BYTES - _HASH_LEN - 1)}-{_id_hash(raw)}"


@dataclass(frozen=True)
class VideoEntry:
    """One video to extract. `start`/`end` trim in source frame numbers (Touch-QA, Thermal-QA)."""

    video_id: str
    path: str
    split: str
    start: int | None = None
    end: int | None = None
    # Sensor videos recorded beside this one ((modality, path) pairs, e.g. ("touch", ".../gelsight.mp4")),
    # decoded in the same pass at the RGB frames' timestamps (core.modalities: stream modalities).
    streams: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QARecord:
    """One question. `options` is empty for open-ended questions; `answer` is always the text."""

    qid: str
    video_id: str
    split: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    answer_idx: int | None = None
    qtype: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class DatasetIndex:
    """What a dataset adapter returns: the videos to extract and the questions per split."""

    name: str
    videos: list[VideoEntry]
    qa: dict[str, list[QARecord]]
