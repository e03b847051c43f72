# make bench   (runs: python scripts/bench_decode.py [--minutes 5] [--uhd-seconds 10] [--frames 16 --max-side 640])
#              python scripts/bench_decode.py --compare [--repeat 5]   (the decoder table only)
"""Decode memory and decoder speed on this machine -> bench/results/decode.json and
bench/results/decoders.json (summarised in docs/benchmarks.md).

Decoder table (`--compare`): torchcodec, decord and PyAV on each kind of media the tests make
(H.264 long, rotated, variable frame rate, AV1; 720p, made here), each decode in a fresh child
process, the runs interleaved (repeat r: every video x every decoder, then r + 1) so that the
machine's changing load falls on all decoders alike. Per run: wall seconds, CPU seconds of the
child (user + system, all its threads), frames kept per wall second, peak RSS above the
imported-everything baseline; the load average before and after is recorded. Medians reported.

Makes (PyAV, x264 ultrafast, a moving bar over a still gradient: cheap to encode) a long 1080p video
and a short 4K one in bench/tmp/, then decodes the stored frames of each with decord and with the
PyAV fallback (decord refused), each case in a fresh child process, and compares the decode's peak
resident memory with the bytes of the frames it keeps (stored frames + their next frames).

Peak RSS: the child imports everything and reads its RSS (the process baseline: interpreter,
numpy, cv2, PyAV, decord), resets the kernel's high-water mark (/proc/self/clear_refs) and reads
VmHWM after the decode; the delta is what the decode itself took at its peak. That delta still
contains a cost that does not grow with the frames kept: the codec (its reference frames are at
the SOURCE size), the demuxer's index, the scaler. It is measured separately as the same decode
keeping 1 stored frame (2 frames with its next one) and subtracted: the ratio reported is
(peak delta - fixed cost) / (kept bytes - the 1-frame case's kept bytes). Target: <= 1.5.
Each case runs `--repeat` times (children); the medians are reported, every run is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def make_video(path: Path, width: int, height: int, seconds: float, fps: int = 30, codec: str = "libx264",
               rotation: int | None = None, vfr: bool = False) -> Path:
    """Low-complexity video (yuv420p planes written directly: no RGB conversion per frame), a
    keyframe every 2 s. `rotation`: a display matrix; `vfr`: frame intervals alternating 1/fps and
    3/fps, with a one-second hole every 10 s (what screen recorders and phones write)."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    planes = np.empty((height * 3 // 2, width), np.uint8)
    luma = np.tile(np.linspace(16, 200, width, dtype=np.uint8), (height, 1))
    bar = max(8, width // 40)
    speed = {"preset": "ultrafast", "crf": "28"} if codec == "libx264" else {"preset": "12", "crf": "40"}
    with av.open(str(tmp), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {**speed, "g": str(2 * fps)}
        if rotation is not None:
            v.set_display_rotation(rotation)
        if vfr:
            v.time_base = v.codec_context.time_base = Fraction(1, 1000)
        t = 0.0
        for i in range(int(seconds * fps)):
            planes[:height] = luma
            x = (i * 7) % (width - bar)
            planes[:height, x : x + bar] = 235
            planes[height:] = 128
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            if vfr:
                frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                t += (1 if i % 2 else 3) / fps + (1.0 if i % (10 * fps) == 10 * fps - 1 else 0.0)
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    tmp.rename(path)
    return path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(video: str, decoder: str, frames: int, max_side: int) -> dict:
    """One decode in this (fresh) process: its peak RSS above the imported-everything baseline."""
    import resource

    import av  # noqa: F401  (imported before the baseline is read)
    import cv2  # noqa: F401
    import decord  # noqa: F401

    import torchcodec.decoders  # noqa: F401

    import pipeline.decode as dec

    cfg = dec.DecodeConfig(num_frames_stored=frames, max_side=max_side, audio=False, decoders=(decoder,))
    baseline = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm = "VmHWM"
    except OSError:
        hwm = None
    t0, c0 = time.perf_counter(), time.process_time()
    out = dec.decode_video(video, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status(hwm) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = out["frames"].nbytes + (out["next_frames"].nbytes if out["next_frames"] is not None else 0)
    assert out["decoder"] == decoder, out["decoder"]
    return {"baseline_rss": baseline, "peak_delta": peak - baseline, "kept_bytes": kept,
            "kept_shape": list(out["frames"].shape), "num_frames": out["num_frames"], "seconds": seconds, "cpu_seconds": cpu,
            "pyav_stats": dict(dec.pyav_stats), "hwm_reset": hwm is not None}


def run_child(video: Path, decoder: str, frames: int, max_side: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(video), decoder, str(frames), str(max_side)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({video.name}, {decoder}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(video: Path, decoder: str, frames: int, max_side: int, repeat: int) -> dict:
    """Median of `repeat` children each (decord's peak varies from run to run with its threads'
    timing, by up to ~10 MiB under load; the spread is recorded)."""
    runs = [run_child(video, decoder, frames, max_side) for _ in range(repeat)]
    ones = [run_child(video, decoder, 1, max_side) for _ in range(repeat)]
    full = sorted(runs, key=lambda r: r["peak_delta"])[len(runs) // 2]
    one = sorted(ones, key=lambda r: r["peak_delta"])[len(ones) // 2]
    marginal_kept = full["kept_bytes"] - one["kept_bytes"]
    ratio = (full["peak_delta"] - one["peak_delta"]) / marginal_kept if marginal_kept > 0 else None
    return {"video": video.name, "decoder": decoder, "frames_stored": frames, "max_side": max_side,
            "source_frames": full["num_frames"], "kept_shape": full["kept_shape"],
            "kept_mib": full["kept_bytes"] / MIB, "process_baseline_mib": full["baseline_rss"] / MIB,
            "peak_delta_mib": full["peak_delta"] / MIB, "fixed_cost_mib": one["peak_delta"] / MIB,
            "peak_delta_mib_runs": [r["peak_delta"] / MIB for r in runs],
            "fixed_cost_mib_runs": [r["peak_delta"] / MIB for r in ones],
            "ratio_raw": full["peak_delta"] / full["kept_bytes"], "ratio_above_fixed": ratio,
            "seconds": full["seconds"], "pyav_stats": full["pyav_stats"], "hwm_reset": full["hwm_reset"]}


def table(rows: list[dict]) -> str:
    head = ("| video | decoder | source frames | kept (frames, H x W) | kept MiB | process baseline MiB "
            "| decode peak MiB | fixed (1 frame) MiB | (peak - fixed) / kept | peak / kept | s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        f, h, w = r["kept_shape"][0], r["kept_shape"][1], r["kept_shape"][2]
        ratio = f"{r['ratio_above_fixed']:.2f}" if r["ratio_above_fixed"] is not None else "-"
        lines.append(f"| {r['video']} | {r['decoder']} | {r['source_frames']} | {2 * f} x {h} x {w} "
                     f"| {r['kept_mib']:.1f} | {r['process_baseline_mib']:.0f} | {r['peak_delta_mib']:.1f} "
                     f"| {r['fixed_cost_mib']:.1f} | **{ratio}** | {r['ratio_raw']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def kind_videos(tmp: Path, seconds: float) -> dict[str, Path]:
    """One 720p video per kind of media the tests make (tests/media.py), `seconds` long."""
    w, h = 1280, 720
    return {"h264 long": make_video(tmp / f"k_h264_{seconds:g}s.mp4", w, h, seconds),
            "h264 rotated 90": make_video(tmp / f"k_rot90_{seconds:g}s.mp4", w, h, seconds, rotation=90),
            "h264 VFR": make_video(tmp / f"k_vfr_{seconds:g}s.mp4", w, h, seconds, vfr=True),
            "AV1": make_video(tmp / f"k_av1_{seconds:g}s.mp4", w, h, seconds, codec="libsvtav1")}


def compare(videos: dict[str, Path], decoders: list[str], frames: int, max_side: int, repeat: int) -> list[dict]:
    """Every (kind, decoder) `repeat` times, interleaved; a decoder that refuses a kind is noted."""
    runs: dict[tuple[str, str], list] = {(k, d): [] for k in videos for d in decoders}
    for _ in range(repeat):
        for kind, video in videos.items():
            for d in decoders:
                load = os.getloadavg()[0]
                try:
                    r = run_child(video, d, frames, max_side)
                except RuntimeError as exc:
                    r = {"error": str(exc).strip().splitlines()[-1][:200]}
                r["load_before"] = load
                runs[(kind, d)].append(r)
    rows = []
    for (kind, d), rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        med = lambda key: float(np.median([r[key] for r in ok])) if ok else None  # noqa: E731
        kept = 2 * ok[0]["kept_shape"][0] if ok else 0
        rows.append({"kind": kind, "video": videos[kind].name, "decoder": d, "runs": rs, "ok": len(ok),
                     "source_frames": ok[0]["num_frames"] if ok else None, "frames_decoded_out": kept,
                     "wall_s": med("seconds"), "cpu_s": med("cpu_seconds"),
                     "frames_per_s": kept / med("seconds") if ok else None,
                     "peak_delta_mib": med("peak_delta") / MIB if ok else None,
                     "error": None if ok else rs[0]["error"]})
    return rows


def compare_table(rows: list[dict]) -> str:
    lines = ["| media (720p) | decoder | kept frames/s | wall s | CPU s | decode peak MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['kind']} | {r['decoder']} | cannot open | | | |")
            continue
        lines.append(f"| {r['kind']} | {r['decoder']} | {r['frames_per_s']:.1f} | {r['wall_s']:.2f} "
                     f"| {r['cpu_s']:.2f} | {r['peak_delta_mib']:.1f} |")
    return "\n".join(lines)


def main_compare(args, argv) -> dict:
    tmp = Path(args.tmp)
    t0 = time.perf_counter()
    videos = kind_videos(tmp, args.kind_seconds)
    made = time.perf_counter() - t0
    load0 = os.getloadavg()
    rows = compare(videos, args.decoders.split(","), args.frames, args.max_side, args.repeat)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "command": " ".join(["python scripts/bench_decode.py", *argv]), "make_videos_s": made,
              "loadavg_before": load0, "loadavg_after": os.getloadavg(),
              "videos": {k: v.stat().st_size for k, v in videos.items()}, "cases": rows}
    out = Path(args.out).with_name("decoders.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(compare_table(rows))
    print(f"(load average {load0[0]:.1f} before, {result['loadavg_after'][0]:.1f} after; -> {out})")
    return result


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the 1080p video")
    ap.add_argument("--uhd-seconds", type=float, default=10.0, help="length of the 4K video")
    ap.add_argument("--frames", type=int, default=16, help="stored frames (the full preset's num_frames_stored)")
    ap.add_argument("--max-side", type=int, default=640, help="the full preset's max_side")
    ap.add_argument("--decoders", default="torchcodec,decord,pyav")
    ap.add_argument("--repeat", type=int, default=3, help="children per case (the median is reported)")
    ap.add_argument("--tmp", default=str(ROOT / "bench" / "tmp"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode.json"))
    ap.add_argument("--compare", action="store_true", help="only the decoder table (media kinds x decoders)")
    ap.add_argument("--kind-seconds", type=float, default=60.0, help="length of each media-kind video")
    args = ap.parse_args(argv)
    if args.compare:
        return main_compare(args, argv)
    main_compare(args, argv)

    tmp = Path(args.tmp)
    t0 = time.perf_counter()
    videos = [make_video(tmp / f"hd_1080p_{args.minutes:g}min.mp4", 1920, 1080, args.minutes * 60),
              make_video(tmp / f"uhd_4k_{args.uhd_seconds:g}s.mp4", 3840, 2160, args.uhd_seconds)]
    made = time.perf_counter() - t0
    rows = [measure(v, d, args.frames, args.max_side, args.repeat) for v in videos for d in args.decoders.split(",")]
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "command": " ".join(["python scripts/bench_decode.py", *argv]), "make_videos_s": made,
              "videos": {v.name: v.stat().st_size for v in videos}, "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"(videos made in {made:.0f} s; -> {args.out})")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        video, decoder, frames, max_side = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(video, decoder, frames, max_side)))
    else:
        main(sys.argv[1:])
