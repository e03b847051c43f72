"""Test media made with PyAV: real H.264/AAC files, plus the broken kinds users meet."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def bar_frame(i: int, size=(64, 48), step: int = 2) -> np.ndarray:
    """Frame `i` of write_video: a white bar 8 px wide at x = 4 + i * step (mod), over black."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    x = (4 + i * step) % (w - 8)
    img[:, x : x + 8] = 255
    return img


def write_video(path: Path, *, frames: int = 20, fps: int = 10, size=(64, 48), audio: bool = True,
                tone_hz: float = 440.0, step: int = 2, rotation: int | None = None, gop: int | None = None,
                tone_change_s: float | None = None, codec: str = "libx264") -> Path:
    """A white bar moving right by `step` px per frame over black; optional sine tone (twice as
    high from `tone_change_s` on). `rotation`: a display matrix turning the picture that many
    degrees counter-clockwise (what phones write); `gop`: frames between keyframes; `codec`:
    "libx264" or "libsvtav1" (AV1, which decord 0.6 cannot open)."""
    w, h = size
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        speed = {"preset": "ultrafast", "crf": "18"} if codec == "libx264" else {"preset": "12", "crf": "20"}
        v.options = {**speed, **({"g": str(gop)} if gop else {})}
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=16000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(frames):
            for p in v.encode(av.VideoFrame.from_ndarray(bar_frame(i, size, step), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(int(16000 * frames / fps)) / 16000
            hz = tone_hz if tone_change_s is None else np.where(t < tone_change_s, tone_hz, 2 * tone_hz)
            wave = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
            for k in range(0, len(wave), 1024):
                fr = av.AudioFrame.from_ndarray(wave[None, k : k + 1024], format="fltp", layout="mono")
                fr.sample_rate = 16000
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def write_vfr_video(path: Path, times_s, *, size=(64, 48), step: int = 2) -> Path:
    """A variable-frame-rate video: frame i (write_video's bar frame i) is shown at times_s[i]."""
    w, h = size
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.time_base = v.codec_context.time_base = tb
        v.options = {"preset": "ultrafast", "crf": "18"}
        for i, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(bar_frame(i, size, step), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), tb
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    return path


def write_broken_set(folder: Path) -> dict[str, Path]:
    """One of each bad input the pipeline must survive, plus two good videos; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_video(folder / "good_a.mp4")
    write_video(folder / "good_b.mp4", tone_hz=880.0, step=3)
    blob = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(blob[: len(blob) // 2])
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    (folder / "zero_byte.mp4").write_bytes(b"")
    write_video(folder / "no_audio.mp4", audio=False)
    write_video(folder / "one_frame.mp4", frames=1)
    return {p.stem: p for p in folder.glob("*.mp4")} | {"missing": folder / "missing.mp4"}
