"""Decode a video ONCE: time-sampled RGB frames (+ the next frame of each, for flow) and 16 kHz audio.

The decoders are tried in the order `features.decode.resources.decoders` names (PyAV, decord,
torchcodec in the presets: the measured order, docs/benchmarks.md); each one that refuses a file
hands it to the next, and the payload's `decoder` says which one decoded it. PyAV bundles its own
FFmpeg and decodes AV1, which decord 0.6 cannot open. torchcodec needs the system's FFmpeg libraries
(scripts/setup.sh installs them); `decode.resources.device: cuda` makes it decode on the GPU
(NVDEC). A folder of images is accepted as a video too (multi-view scenes such as SQA3D's). Every
failure is a `DecodeError` with a reason a user can act on.

What a decode costs is what it keeps (`decode.version: 2` in conf/features/*.yaml):

* Size: frames come out of the decoder at their stored size (the longer side at most
  `max_side`, `target_size`), so a 4K video never holds full-size RGB frames. decord is asked for
  that size (its scaler); PyAV reformats each kept frame to it (swscale, bilinear: the closest of
  swscale's filters to decord's output). The codec's own reference frames stay at source size.
* Rotation: the display matrix (phone videos' `rotate`) is applied, so frames are stored upright.
  PyAV reads it from the first decoded frame (`VideoFrame.rotation`) and turns each kept frame
  with `np.rot90`. decord 0.6 turns frames itself (its FFmpeg's `rotate` tag, in its filter
  graph) but returns garbage for a quarter turn unless given an explicit size, and fails on some
  sizes: it is given the upright size, and its first frame of a turned video is checked against
  PyAV's (a mismatch hands the video to PyAV). Flips in the matrix are ignored.
* Time: frames are chosen by presentation time, so variable-frame-rate videos are sampled evenly
  in time (`sample_by_time`): the k-th of `count` frames is the frame ON SCREEN at the middle of
  the k-th of `count` equal time segments of [start, end) (the latest frame whose time is at or
  before it). For a constant frame rate this is exactly the old segment midpoint index
  (`segment_indices`). `timestamps` are the kept frames' own presentation times, in seconds from
  the video stream's start.
* torchcodec is asked for frames by index in presentation order (its exact seek mode) at the
  upright stored size (its FFmpeg filter graph resizes; it applies the display matrix itself), a
  few frames per call (bounded memory). The frame times come from PyAV's packet timeline (demuxing
  only), so all decoders choose the same frames; a frame count that disagrees refuses the file.
* The PyAV fallback streams: it reads the packet timeline (no decoding), then decodes from the
  keyframe before each wanted frame (seeking when a keyframe lies between the current position
  and the next wanted frame, decoding straight on otherwise) and converts only the wanted frames.
* Audio is decoded once (PyAV, seeking to the span; decord only if PyAV fails), mono at the
  extractor's rate; a trimmed clip keeps only its span [start, end) on the video's clock (an
  untrimmed video keeps its whole track).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DECODE_VERSION = 2  # decode.version: 2 = size, rotation and time sampling as described above
# swscale filter for PyAV's resize: of swscale's filters, the closest to what decord returns.
PYAV_INTERPOLATION = "BILINEAR"
# A wanted time within this fraction of the mean frame interval after a frame's time counts as
# that frame's (decord's float32 timestamps, float rounding of segment midpoints that fall on a frame).
TIME_TOLERANCE = 0.01
DECORD_CHUNK = 2  # frames per decord get_batch call: a stored frame and its next one (bounds the copy)
# The order decoders are tried in when the preset names none (features.decode.resources.decoders):
# PyAV was the fastest (kept frames/s and CPU seconds) and smallest (peak memory) of the three on
# every kind of media measured (docs/benchmarks.md, decoder table); decord next, torchcodec last.
DEFAULT_DECODERS = ("pyav", "decord", "torchcodec")
DECODERS = ("torchcodec", "decord", "pyav")
DEVICES = ("cpu", "cuda")

# What the PyAV decoder did in this process (tests read it): frames decoded, frames converted to
# RGB arrays (only the kept ones), seeks.
pyav_stats = {"decoded": 0, "converted": 0, "seeks": 0}


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
    version: int = DECODE_VERSION  # what decoding means (see the module doc); hashed with the rest
    # Runtime choices (decode.resources: not hashed; the payload records the decoder used).
    decoders: tuple[str, ...] | None = None  # tried in this order; None: DEFAULT_DECODERS
    device: str = "cpu"  # "cuda": torchcodec decodes on the GPU (NVDEC)

    def __post_init__(self):
        if self.decoders is None:
            object.__setattr__(self, "decoders", DEFAULT_DECODERS)
        unknown = [d for d in self.decoders if d not in DECODERS]
        if unknown or not self.decoders:
            raise ValueError(f"features.decode.resources.decoders {list(self.decoders)}: choose from {list(DECODERS)}")
        if self.device not in DEVICES:
            raise ValueError(f"features.decode.resources.device {self.device!r}: choose from {list(DEVICES)}")
        if self.version != DECODE_VERSION:
            raise ValueError(f"features.decode.version {self.version} is not available: this code decodes as "
                             f"version {DECODE_VERSION} (pipeline/decode.py); a store made with another version "
                             "cannot be extended, make a new one")

    @classmethod
    def from_cfg(cls, cfg) -> "DecodeConfig":
        keys = cls.__dataclass_fields__
        out = {k: cfg[k] for k in keys if k in cfg}
        out["streams"] = tuple(out.get("streams") or ())
        res = cfg.get("resources") or {}
        if res.get("decoders"):
            out["decoders"] = tuple(res["decoders"])
        if res.get("device"):
            out["device"] = str(res["device"])
        return cls(**out)


def segment_indices(num_frames: int, count: int, start: int | None = None, end: int | None = None) -> np.ndarray:
    """Midpoints of ``count`` equal segments of frames [start, end): the stored frame indices of a
    constant-frame-rate video (and of a folder of images).

    Deterministic (the trainer re-samples among stored frames at train time). Shorter videos
    repeat frames rather than fail.
    """
    lo, hi = _frame_range(num_frames, start, end)
    edges = np.linspace(lo, hi, count + 1)
    return np.clip(((edges[:-1] + edges[1:]) / 2).astype(np.int64), lo, hi - 1)


def _frame_range(num_frames: int, start, end) -> tuple[int, int]:
    lo = 0 if start is None else max(0, int(start))
    hi = num_frames if end is None else min(num_frames, int(end))
    if hi <= lo:
        raise DecodeError(f"empty frame range [{lo}, {hi}) in a video of {num_frames} frames")
    return lo, hi


def sample_by_time(times: np.ndarray, count: int, start: int | None = None, end: int | None = None,
                   fps: float = 0.0) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The stored frames of a video whose frames are shown at `times` (seconds, presentation order).

    [start, end) (source frame numbers, as in the manifest) becomes the time span
    [times[start], times[end]) (the last frame lasts one mean frame interval); the k-th stored frame
    is the one on screen at the middle of the k-th of `count` equal parts of that span: the latest
    frame whose time is at or before it. Returns (frame indices, (span start, span end) seconds).
    Timestamps that are not finite or not in order fall back to `segment_indices`.
    """
    times = np.asarray(times, np.float64)
    n = len(times)
    lo, hi = _frame_range(n, start, end)
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0) or (n > 1 and times[-1] <= times[0]):
        return segment_indices(n, count, start, end), ((lo / fps, hi / fps) if fps > 0 else None)
    dt = float(times[-1] - times[0]) / (n - 1) if n > 1 else 0.0
    if dt <= 0:
        dt = 1.0
    t_lo = float(times[lo])
    t_hi = float(times[hi]) if hi < n else float(times[-1]) + dt
    edges = np.linspace(t_lo, t_hi, count + 1)
    wanted = (edges[:-1] + edges[1:]) / 2
    idx = np.searchsorted(times, wanted + TIME_TOLERANCE * dt, side="right") - 1
    return np.clip(idx, lo, hi - 1).astype(np.int64), (t_lo, t_hi)


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) a frame of (width, height) is stored at: the longer side at most `max_side`."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    """A safety net (image folders; a decoder that returned more than asked): cap the longer side."""
    h, w = frames.shape[1:3]
    size = target_size(w, h, max_side)
    if size == (w, h):
        return frames
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def _quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns (np.rot90's k) for a display rotation in degrees."""
    return round((rotation or 0) / 90.0) % 4


def _next_indices(idx: np.ndarray, num_frames: int) -> np.ndarray | None:
    # Stored frames only reach the last frame when more frames are stored than the video has (or
    # the span ends there); that frame is paired with itself (zero flow) rather than with one behind it.
    if num_frames < 2:
        return None
    return np.minimum(idx + 1, num_frames - 1)


def _groups(idx: np.ndarray, n: int) -> list[np.ndarray]:
    nxt = _next_indices(idx, n)
    return [idx] if nxt is None else [idx, nxt]


# ---------------------------------------------------------------------------------------- decord


def _probe(path: str, max_side: int | None = None) -> tuple[int, int, int, np.ndarray | None]:
    """(width, height, quarter turns, upright first frame) of the first video stream,
    from its first decoded frame (PyAV: the display matrix reaches the frame, not the stream
    object). The upright first frame, at the stored size, only for a turned video."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            turns = _quarter_turns(frame.rotation)
            return frame.width, frame.height, turns, _render(frame, turns, max_side) if turns else None
    raise DecodeError("no decodable video frames")


def _render(frame, turns: int, max_side: int | None) -> np.ndarray:
    """A PyAV frame as uint8 RGB [H, W, 3]: resized to its stored size, then turned upright."""
    upright = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    w, h = target_size(*upright, max_side)
    img = frame.reformat(width=h if turns % 2 else w, height=w if turns % 2 else h, format="rgb24",
                         interpolation=PYAV_INTERPOLATION).to_ndarray()
    pyav_stats["converted"] += 1
    return np.rot90(img, turns) if turns else img


def _stream_start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _decord_reader(path: str, max_side: int | None):
    """A decord VideoReader that returns frames upright at their stored size (see the module doc).

    decord 0.6 turns frames by the `rotate` tag itself; a turned video is checked on its first
    frame against PyAV's upright one, and refused (so PyAV decodes it) if decord's frame is closer
    to the unturned picture or has another shape (decord fails on some sizes of turned video)."""
    import decord

    kwargs, turns, ref = {}, None, None
    try:
        width, height, turns, ref = _probe(path, max_side)
    except Exception:  # PyAV cannot read it: let decord try at source size (resized afterwards)
        pass
    if turns is not None:
        upright = (height, width) if turns % 2 else (width, height)
        size = target_size(*upright, max_side)
        if size != upright or turns % 2:
            kwargs = {"width": size[0], "height": size[1]}
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, **kwargs)
    if ref is not None:
        got = vr.get_batch([0]).asnumpy()[0].astype(np.int16)
        if got.shape != ref.shape:
            raise DecodeError(f"decord returns {got.shape[:2]} frames for this turned video, not {ref.shape[:2]}")
        unturned = np.rot90(ref, -turns)
        if turns % 2:  # what decord would return had it not turned the picture: squeezed to the size asked
            unturned = cv2.resize(np.ascontiguousarray(unturned), ref.shape[1::-1], interpolation=cv2.INTER_AREA)
        if np.abs(got - ref).mean() > np.abs(got - unturned).mean():
            raise DecodeError("decord did not apply this video's rotation")
    return vr


def _gather(read_batch, groups: list[np.ndarray]) -> list[np.ndarray]:
    """The frames at each group's indices, each distinct frame decoded once, a few at a time
    (``read_batch(indices) -> uint8 [k, H, W, 3]`` in host memory): the copy stays bounded."""
    want = np.unique(np.concatenate(groups))
    outs: list[np.ndarray] | None = None
    for k in range(0, len(want), DECORD_CHUNK):
        chunk = want[k : k + DECORD_CHUNK]
        batch = read_batch(chunk.tolist())
        if outs is None:
            outs = [np.empty((len(g),) + batch.shape[1:], np.uint8) for g in groups]
        for j, i in enumerate(chunk):
            for g, out in zip(groups, outs):
                out[g == i] = batch[j]
        del batch
    return outs


def _decord_times(vr) -> np.ndarray:
    return vr.get_frame_timestamp(np.arange(len(vr)).tolist())[:, 0].astype(np.float64)


def _decode_decord(path: str, cfg: DecodeConfig, start, end) -> dict:
    vr = _decord_reader(path, cfg.max_side)
    n = len(vr)
    if n == 0:
        raise DecodeError("no decodable video frames")
    times, fps = _decord_times(vr), float(vr.get_avg_fps())
    idx, span = sample_by_time(times, cfg.num_frames_stored, start, end, fps)
    outs = _gather(lambda ids: vr.get_batch(ids).asnumpy(), _groups(idx, n))
    return {"frames": outs[0], "next_frames": outs[1] if len(outs) > 1 else None, "frame_indices": idx,
            "timestamps": times[idx], "fps": fps, "num_frames": n, "decoder": "decord", "span": span}

# ------------------------------------------------------------------------------------ torchcodec


def _pyav_probe(path: str):
    """(mean fps, time base, stream start, every packet's pts, keyframe flags) of the first video
    stream, from the demuxer alone (no decoding)."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        pts, keys = _pyav_timeline(container, stream)
        return fps, stream.time_base, stream.start_time, pts, keys


def _pyav_times(path: str) -> tuple[np.ndarray, float]:
    """Every frame's presentation time (seconds from the video stream's start, sorted) and the
    mean frame rate, from the demuxer alone (no decoding)."""
    fps, tb, start, pts, _ = _pyav_probe(path)
    if not pts or any(p is None for p in pts):
        raise DecodeError("the packets carry no timestamps")
    order = np.sort(np.asarray(pts, np.int64))
    origin = start if start is not None else int(order[0])
    return (order - origin).astype(np.float64) * tb.numerator / tb.denominator, fps


def _torchcodec_reader(path: str, max_side: int | None, device: str, n: int):
    """A torchcodec VideoDecoder returning upright uint8 [N, H, W, 3] frames at their stored size."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    # The header alone gives the upright size (torchcodec applies the rotation itself); the exact
    # decoder (which scans the file once) is then opened with the resize it needs.
    meta = VideoDecoder(path, seek_mode="approximate").metadata
    w, h = meta.width, meta.height
    size = target_size(w, h, max_side)
    resize = [Resize((size[1], size[0]))] if size != (w, h) else None
    decoder = VideoDecoder(path, dimension_order="NHWC", device=device, transforms=resize)
    if len(decoder) != n:
        raise DecodeError(f"torchcodec counts {len(decoder)} frames, the demuxer {n}")
    return decoder


def _decode_torchcodec(path: str, cfg: DecodeConfig, start, end) -> dict:
    times, fps = _pyav_times(path)
    n = len(times)
    decoder = _torchcodec_reader(path, cfg.max_side, cfg.device, n)
    idx, span = sample_by_time(times, cfg.num_frames_stored, start, end, fps)
    outs = _gather(lambda ids: decoder.get_frames_at(ids).data.cpu().numpy(), _groups(idx, n))
    return {"frames": outs[0], "next_frames": outs[1] if len(outs) > 1 else None, "frame_indices": idx,
            "timestamps": times[idx], "fps": fps, "num_frames": n, "decoder": "torchcodec", "span": span}


def _stream_torchcodec(path: str, timestamps: np.ndarray, cfg: "DecodeConfig") -> np.ndarray:
    times, _ = _pyav_times(path)
    decoder = _torchcodec_reader(path, cfg.max_side, cfg.device, len(times))
    return _gather(lambda ids: decoder.get_frames_at(ids).data.cpu().numpy(), [nearest_frames(times, timestamps)])[0]


# ------------------------------------------------------------------------------------------ PyAV


class _SeekFailed(Exception):
    """A seek landed after the frame it was for (a container without a usable index)."""


def _pyav_timeline(container, stream) -> tuple[list, list]:
    """Every video packet's presentation time and the keyframes' ones, from the demuxer alone."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        pts.append(packet.pts)
        if packet.is_keyframe and packet.pts is not None:
            keys.append(packet.pts)
    return pts, sorted(keys)


class _Slots:
    """Preallocated outputs: `groups` (arrays of wanted keys) -> uint8 [len, H, W, 3] each, filled
    as the decoder passes each wanted frame, which is resized, turned upright and converted once."""

    def __init__(self, groups: list[np.ndarray], max_side: int | None):
        self.groups, self.max_side = groups, max_side
        self.outs: list[np.ndarray] | None = None
        self.turns: int | None = None

    def fill(self, frame, keys) -> None:
        if self.turns is None:
            self.turns = _quarter_turns(frame.rotation)
        img = _render(frame, self.turns, self.max_side)
        if self.outs is None:
            self.outs = [np.empty((len(g),) + img.shape, np.uint8) for g in self.groups]
        for g, out in zip(self.groups, self.outs):
            mask = np.isin(g, keys)
            if mask.any():
                out[mask] = img


def _key_before(keys: list[int], t: int) -> int | None:
    k = bisect.bisect_right(keys, t) - 1
    return keys[k] if k >= 0 else None


def _pyav_decode(path: str, wanted: list[int], keys: list[int] | None, slots: _Slots, by_pts: bool) -> None:
    """Decode the first video stream of `path`, filling `slots` with the frames at `wanted` (sorted
    presentation times, or output ordinals when not `by_pts`). A wanted frame the decoder does not
    return is replaced by the next one it returns (the last one at the end of the stream).

    With `keys` (keyframe times) it seeks to the keyframe at or before the next wanted frame
    whenever that keyframe lies beyond the frames decoded so far, and decodes straight on
    otherwise; without, it decodes from the start. Raises `_SeekFailed` when a seek lands after
    its frame or a frame has no timestamp (the caller then retries without seeking / by order).
    """
    import av

    i, last = 0, None
    with av.open(path) as container:
        stream = container.streams.video[0]
        seek_to = None
        while i < len(wanted):
            if keys:
                seek_to = _key_before(keys, wanted[i])
                if seek_to is not None:
                    container.seek(int(seek_to), stream=stream)  # lands on the keyframe at or before it
                    pyav_stats["seeks"] += 1
            fresh, reseek = True, False
            for ordinal, frame in enumerate(container.decode(stream)):
                pyav_stats["decoded"] += 1
                key = frame.pts if by_pts else ordinal
                if key is None:
                    raise _SeekFailed("a decoded frame has no timestamp")
                if fresh and seek_to is not None and seek_to > keys[0] and key > wanted[i]:
                    raise _SeekFailed(f"a seek to {seek_to} landed at {key}, after {wanted[i]}")
                fresh, last, hits = False, frame, []
                while i < len(wanted) and wanted[i] <= key:
                    hits.append(wanted[i])
                    i += 1
                if hits:
                    slots.fill(frame, hits)
                if i == len(wanted):
                    break
                if keys:
                    nxt = _key_before(keys, wanted[i])
                    if nxt is not None and nxt > key and (seek_to is None or nxt > seek_to):
                        reseek = True  # a keyframe lies between here and the next wanted frame
                        break
            if not reseek:
                break
        if i < len(wanted):
            if last is None:
                raise DecodeError("no decodable video frames")
            slots.fill(last, wanted[i:])


def _pyav_gather(path: str, max_side: int | None, choose) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Decode only the frames `choose(times, n, fps) -> (groups of frame indices, extra)` picks.

    Returns (one uint8 [len, H, W, 3] array per group, every frame's time, info)."""
    fps, tb, start, pts, keys = _pyav_probe(path)
    n = len(pts)
    if n == 0:
        raise DecodeError("no decodable video frames")
    by_pts = all(p is not None for p in pts)
    if by_pts:
        order = np.sort(np.asarray(pts, np.int64))
        origin = start if start is not None else int(order[0])
        times = (order - origin).astype(np.float64) * tb.numerator / tb.denominator
        modes = [(keys, True), (None, True), (None, False)]  # seek; decode through; count frames
    else:  # no timestamps in the packets: frames are counted as the decoder returns them
        order = np.arange(n)
        times = np.arange(n) / (fps or 1.0)
        modes = [(None, False)]
    groups, extra = choose(times, n, fps)
    for mode_keys, mode_pts in modes:
        labels = [order[g] if mode_pts else g for g in groups]
        slots = _Slots(labels, max_side)
        try:
            _pyav_decode(path, sorted({int(x) for g in labels for x in g}), mode_keys, slots, mode_pts)
            break
        except _SeekFailed:
            continue
    return slots.outs, times, {"fps": fps, "num_frames": n, "extra": extra}


def _decode_pyav(path: str, cfg: DecodeConfig, start, end) -> dict:
    def choose(times, n, fps):
        idx, span = sample_by_time(times, cfg.num_frames_stored, start, end, fps)
        return _groups(idx, n), (idx, span)

    outs, times, info = _pyav_gather(path, cfg.max_side, choose)
    idx, span = info["extra"]
    return {"frames": outs[0], "next_frames": outs[1] if len(outs) > 1 else None, "frame_indices": idx,
            "timestamps": times[idx], "fps": info["fps"], "num_frames": info["num_frames"], "decoder": "pyav",
            "span": span}


# ------------------------------------------------------------------------------- images and audio


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


def _audio_pyav(path: str, sr: int, span: tuple[float, float] | None) -> np.ndarray | None:
    """Mono float32 at `sr`; with `span` (seconds on the video stream's clock), that part only."""
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        t0 = t1 = None
        if span is not None:
            video = container.streams.video[0] if container.streams.video else None
            offset = _stream_start(video) if video is not None else 0.0
            t0, t1 = span[0] + offset, span[1] + offset
            if t0 > _stream_start(stream):
                container.seek(int(t0 / stream.time_base), stream=stream)  # the audio frame at or before t0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks, first = [], None
        for frame in container.decode(stream):
            if t1 is not None and frame.time is not None and frame.time >= t1:
                break
            if first is None:
                first = frame.time
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if t0 is not None:
        skip = max(0, round((t0 - (first if first is not None else t0)) * sr))
        audio = audio[skip : skip + max(0, round((t1 - t0) * sr))]
    return audio


def _audio_decord(path: str, sr: int, span: tuple[float, float] | None) -> np.ndarray:
    import decord

    ar = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=sr, mono=True)
    audio = ar[:].asnumpy().reshape(-1).astype(np.float32)
    if span is not None:  # decord's clock starts at the stream's start, as the video's does
        audio = audio[max(0, round(span[0] * sr)) : max(0, round(span[1] * sr))]
    return audio


def decode_audio(path: str, sr: int, span: tuple[float, float] | None = None) -> tuple[np.ndarray | None, str | None]:
    """Mono float32 audio at `sr` (of [span) seconds on the video's clock when given), or
    (None, reason) when the file has no usable audio. Decoded once by PyAV; decord if PyAV fails."""
    try:
        audio = _audio_pyav(path, sr, span)
    except Exception as first:
        try:
            audio = _audio_decord(path, sr, span)
        except Exception:
            return None, f"audio undecodable: {_short(first)}"
    if audio is None:
        return None, "no audio stream"
    if audio.size == 0:
        return None, "audio stream is empty" if span is None else "no audio in the clip's time span"
    return audio, None


_NAMES = {"torchcodec": "torchcodec", "decord": "decord", "pyav": "PyAV"}


def _first_that_decodes(decoders, prefix: str, path: str, *args):
    """The result of the first decoder in `decoders` (`prefix + name` in this module, looked up at
    call time) that decodes `path`; a DecodeError naming every decoder's reason when none does."""
    reasons = []
    for name in decoders:
        try:
            return globals()[prefix + name](path, *args)
        except Exception as exc:  # a decoder's own error types vary; its reason is kept
            reasons.append(f"{_NAMES[name]}: {_short(exc)}")
    raise DecodeError(f"undecodable video ({'; '.join(reasons)})")


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
        out = _first_that_decodes(cfg.decoders, "_decode_", str(p), cfg, start, end)
        span = out.pop("span")
        trimmed = start is not None or end is not None
        if cfg.audio:
            out["audio"], note = decode_audio(str(p), cfg.audio_sr, span if trimmed else None)
        else:
            out["audio"], note = None, "audio not requested"
        out.update(audio_sr=cfg.audio_sr, audio_note=note)
    out["frames"] = _resize(out["frames"], cfg.max_side)
    if out["next_frames"] is not None:
        out["next_frames"] = _resize(out["next_frames"], cfg.max_side)
    return out


# -------------------------------------------------------------------------------- sensor streams


def nearest_frames(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each time in `wanted`, the index of the closest of the sorted frame `times`."""
    times = np.asarray(times, np.float64)
    right = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(times[left] - wanted) <= np.abs(times[right] - wanted), left, right).astype(np.int64)


def _stream_decord(path: str, timestamps: np.ndarray, cfg: "DecodeConfig") -> np.ndarray:
    vr = _decord_reader(path, cfg.max_side)
    if len(vr) == 0:
        raise DecodeError("no decodable video frames")
    return _gather(lambda ids: vr.get_batch(ids).asnumpy(), [nearest_frames(_decord_times(vr), timestamps)])[0]


def _stream_pyav(path: str, timestamps: np.ndarray, cfg: "DecodeConfig") -> np.ndarray:
    outs, _, _ = _pyav_gather(path, cfg.max_side, lambda times, n, fps: ([nearest_frames(times, timestamps)], None))
    return outs[0]


def decode_stream(path: str, timestamps: np.ndarray, max_side: int | None,
                  cfg: DecodeConfig | None = None) -> np.ndarray:
    """A sensor video's frames nearest to `timestamps` (the RGB frames' times, seconds):
    uint8 [F, H, W, 3], the longer side at most `max_side`; decoders tried in `cfg.decoders`' order."""
    cfg = cfg or DecodeConfig()
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(p) == 0:
        raise DecodeError(f"empty file (0 bytes): {path}")
    cfg = DecodeConfig(max_side=max_side, decoders=cfg.decoders, device=cfg.device)
    frames = _first_that_decodes(cfg.decoders, "_stream_", str(p), np.asarray(timestamps, np.float64), cfg)
    return _resize(frames, max_side)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]
