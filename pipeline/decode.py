"""Decode a video ONCE: segment-sampled RGB frames (+ the next frame of each, for flow) and 16 kHz audio.

decord is tried first; PyAV (which bundles its own FFmpeg) decodes what decord rejects. A folder of
images is accepted as a video too (multi-view scenes such as SQA3D's). Every failure is a
`DecodeError` with a reason a user can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DecodeError(RuntimeError):
    """The video cannot be decoded; the message says why (file missing, empty, corrupt, ...)."""


@dataclass(frozen=True)
class DecodeConfig:
    num_frames_stored: int = 8
    max_side: int | None = 512
    audio: bool = True
    audio_sr: int = 16000
    image_fps: float = 3.0  # frame rate assumed for folders of images
    streams: tuple[str, ...] = ()  # sensor-stream modalities to decode beside the RGB video

    @classmethod
    def from_cfg(cls, cfg) -> "DecodeConfig":
        keys = cls.__dataclass_fields__
        out = {k: cfg[k] for k in keys if k in cfg}
        out["streams"] = tuple(out.get("streams") or ())
        return cls(**out)


def segment_indices(num_frames: int, count: int, start: int | None = None, end: int | None = None) -> np.ndarray:
    """Midpoints of ``count`` equal segments of frames [start, end): the stored frame indices.

    Deterministic (the trainer re-samples among stored frames at train time). Shorter videos
    repeat frames rather than fail.
    """
    lo = 0 if start is None else max(0, int(start))
    hi = num_frames if end is None else min(num_frames, int(end))
    if hi <= lo:
        raise DecodeError(f"empty frame range [{lo}, {hi}) in a video of {num_frames} frames")
    edges = np.linspace(lo, hi, count + 1)
    return np.clip(((edges[:-1] + edges[1:]) / 2).astype(np.int64), lo, hi - 1)


def _resize(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    if not max_side or max(frames.shape[1:3]) <= max_side:
        return frames
    h, w = frames.shape[1:3]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _next_indices(idx: np.ndarray, num_frames: int) -> np.ndarray | None:
    # Segment midpoints only reach the last frame when more frames are stored than the video
    # has; that frame is paired with itself (zero flow) rather than with a frame behind it.
    if num_frames < 2:
        return None
    return np.minimum(idx + 1, num_frames - 1)


def _decode_decord(path: str, cfg: DecodeConfig, start, end) -> dict:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise DecodeError("no decodable video frames")
    idx = segment_indices(n, cfg.num_frames_stored, start, end)
    nxt = _next_indices(idx, n)
    want = np.unique(np.concatenate([idx, nxt if nxt is not None else idx]))
    batch = vr.get_batch(want.tolist()).asnumpy()
    pos = {int(i): k for k, i in enumerate(want)}
    frames = batch[[pos[int(i)] for i in idx]]
    next_frames = batch[[pos[int(i)] for i in nxt]] if nxt is not None else None
    ts = vr.get_frame_timestamp(idx.tolist())[:, 0].astype(np.float64)
    return {"frames": frames, "next_frames": next_frames, "frame_indices": idx, "timestamps": ts,
            "fps": float(vr.get_avg_fps()), "num_frames": n, "decoder": "decord"}


def _pyav_frames(path: str) -> tuple[list[np.ndarray], list[float], float]:
    """Every RGB frame of the first video stream, its time (seconds) and the stream's fps."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time) if frame.time is not None else len(times) / max(fps, 1e-6))
    if not frames:
        raise DecodeError("no decodable video frames")
    return frames, times, fps


def _decode_pyav(path: str, cfg: DecodeConfig, start, end) -> dict:
    frames, times, fps = _pyav_frames(path)
    n = len(frames)
    idx = segment_indices(n, cfg.num_frames_stored, start, end)
    nxt = _next_indices(idx, n)
    return {"frames": np.stack([frames[i] for i in idx]),
            "next_frames": np.stack([frames[i] for i in nxt]) if nxt is not None else None,
            "frame_indices": idx, "timestamps": np.asarray([times[i] for i in idx], np.float64),
            "fps": fps, "num_frames": n, "decoder": "pyav"}


def _decode_images(folder: Path, cfg: DecodeConfig, start, end) -> dict:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DecodeError(f"folder has no images ({', '.join(IMAGE_EXTS)})")
    n = len(files)
    idx = segment_indices(n, cfg.num_frames_stored, start, end)
    nxt = _next_indices(idx, n)

    def load(i: int) -> np.ndarray:
        img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise DecodeError(f"unreadable image {files[i].name}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    frames = [load(int(i)) for i in idx]
    if len({f.shape for f in frames}) > 1:
        raise DecodeError("images in the folder differ in size")
    return {"frames": np.stack(frames), "next_frames": np.stack([load(int(i)) for i in nxt]) if nxt is not None else None,
            "frame_indices": idx, "timestamps": idx / cfg.image_fps, "fps": cfg.image_fps, "num_frames": n,
            "decoder": "images"}


def _audio_decord(path: str, sr: int) -> np.ndarray:
    import decord

    ar = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=sr, mono=True)
    return ar[:].asnumpy().reshape(-1).astype(np.float32)


def _audio_pyav(path: str, sr: int) -> np.ndarray | None:
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def decode_audio(path: str, sr: int) -> tuple[np.ndarray | None, str | None]:
    """16 kHz mono float32 audio, or (None, reason) when the file has no usable audio."""
    try:
        audio = _audio_decord(path, sr)
    except Exception:  # decord raises on audio-less files; PyAV tells the two cases apart
        try:
            audio = _audio_pyav(path, sr)
        except Exception as exc:
            return None, f"audio undecodable: {exc}"
        if audio is None:
            return None, "no audio stream"
    if audio.size == 0:
        return None, "audio stream is empty"
    return audio, None


def decode_video(path: str, cfg: DecodeConfig, start: int | None = None, end: int | None = None) -> dict:
    """Decode one video (file or image folder) into the payload fields of core.schema."""
    p = Path(path)
    if not p.exists():
        raise DecodeError(f"file not found: {path}")
    if p.is_dir():
        out = _decode_images(p, cfg, start, end)
        out.update(audio=None, audio_sr=cfg.audio_sr, audio_note="image folder has no audio")
    else:
        if os.path.getsize(p) == 0:
            raise DecodeError(f"empty file (0 bytes): {path}")
        try:
            out = _decode_decord(str(p), cfg, start, end)
        except Exception as first:
            try:
                out = _decode_pyav(str(p), cfg, start, end)
            except Exception as second:
                raise DecodeError(f"undecodable video (decord: {_short(first)}; PyAV: {_short(second)})") from None
        out["audio"], note = decode_audio(str(p), cfg.audio_sr) if cfg.audio else (None, "audio not requested")
        out.update(audio_sr=cfg.audio_sr, audio_note=note)
    out["frames"] = _resize(out["frames"], cfg.max_side)
    if out["next_frames"] is not None:
        out["next_frames"] = _resize(out["next_frames"], cfg.max_side)
    return out


def nearest_frames(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each time in `wanted`, the index of the closest of the sorted frame `times`."""
    times = np.asarray(times, np.float64)
    right = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(times[left] - wanted) <= np.abs(times[right] - wanted), left, right).astype(np.int64)


def _stream_decord(path: str, timestamps: np.ndarray) -> np.ndarray:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    if len(vr) == 0:
        raise DecodeError("no decodable video frames")
    idx = nearest_frames(vr.get_frame_timestamp(list(range(len(vr))))[:, 0], timestamps)
    return vr.get_batch(idx.tolist()).asnumpy()


def _stream_pyav(path: str, timestamps: np.ndarray) -> np.ndarray:
    frames, times, _ = _pyav_frames(path)
    return np.stack([frames[i] for i in nearest_frames(np.asarray(times), timestamps)])


def decode_stream(path: str, timestamps: np.ndarray, max_side: int | None) -> np.ndarray:
    """A sensor video's frames nearest to `timestamps` (the RGB frames' times, seconds):
    uint8 [F, H, W, 3], the longer side at most `max_side`. decord first, PyAV as the fallback."""
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(p) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")
    try:
        frames = _stream_decord(str(p), np.asarray(timestamps, np.float64))
    except Exception as first:
        try:
            frames = _stream_pyav(str(p), np.asarray(timestamps, np.float64))
        except Exception as second:
            raise DecodeError(f"undecodable video (decord: {_short(first)}; PyAV: {_short(second)})") from None
    return _resize(frames, max_side)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]
