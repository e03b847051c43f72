# make bench        (or: python scripts/bench.py --videos 24 --sizes 24,96)
"""Extraction benchmarks -> bench/results/extract.json (summarised in docs/benchmarks.md).

1. Fan-out: one pass extracting K modalities (one decode per video) against K single-modality
   passes over the same videos (K decodes per video), on one already-started local Ray.
2. Peak memory of `extract` (the driver plus every Ray process, summed RSS, sampled every 0.2 s)
   at two dataset sizes: it must not grow with the number of videos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from core.modalities import NAMES as MODALITIES

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="extract", overrides=overrides)


def demo_overrides(tmp: Path, n: int) -> list[str]:
    return ["dataset=demo", f"dataset.root={tmp}/data/demo_{n}", f"dataset.num_videos={n}"]


def bench_fanout(tmp: Path, n: int, num_cpus: int) -> dict:
    from pipeline.demo import ensure_demo
    from pipeline.extract import run_extract, start_ray

    base = demo_overrides(tmp, n) + [f"ray.num_cpus={num_cpus}"]
    ensure_demo(compose(base).dataset)  # generate the videos outside the timings
    start_ray({"num_cpus": num_cpus})
    warm = compose(base + [f"out={tmp}/warm", "features.modalities=[rgb]"])
    run_extract(warm)  # pays one-off costs (actor imports, page cache) before anything is timed

    def timed(mods: list[str], tag: str) -> dict:
        cfg = compose(base + [f"out={tmp}/{tag}", f"features.modalities=[{','.join(mods)}]"])
        t0 = time.perf_counter()
        report = run_extract(cfg)
        return {"modalities": mods, "wall_s": round(time.perf_counter() - t0, 2),
                "videos_decoded": report["run"]["videos_decoded"], "videos_ok": report["videos_ok"],
                "stage_seconds": report["run"]["stage_seconds"]}

    fan = timed(MODALITIES, "fanout")
    singles = [timed([m], f"single_{m}") for m in MODALITIES]
    total_single = sum(s["wall_s"] for s in singles)
    return {"videos": n, "k": len(MODALITIES), "fanout": fan, "singles": singles,
            "single_total_wall_s": round(total_single, 2),
            "speedup_single_over_fanout": round(total_single / fan["wall_s"], 2),
            "decodes_fanout": fan["videos_decoded"], "decodes_singles": sum(s["videos_decoded"] for s in singles)}


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def bench_memory(tmp: Path, n: int, num_cpus: int) -> dict:
    from pipeline.demo import ensure_demo

    base = demo_overrides(tmp, n)
    ensure_demo(compose(base).dataset)
    cmd = [sys.executable, str(ROOT / "scripts/extract.py"), *base, f"out={tmp}/mem_{n}", f"ray.num_cpus={num_cpus}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak, samples = psutil.Process(proc.pid), 0, []
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            rss = _tree_rss(ps)
            peak = max(peak, rss)
            samples.append(rss)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"extract failed for {n} videos:\n{out[-3000:]}")
    report = json.loads((tmp / f"mem_{n}" / "demo" / "report.json").read_text())
    return {"videos": n, "peak_rss_mib": round(peak / 2**20), "median_rss_mib": round(sorted(samples)[len(samples) // 2] / 2**20),
            "wall_s": round(time.perf_counter() - t0, 1), "videos_ok": report["videos_ok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24, help="videos in the fan-out comparison")
    ap.add_argument("--sizes", default="24,96", help="two dataset sizes for the peak-memory measurement")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(ROOT / "bench/results/extract.json"))
    ap.add_argument("--tmp", default=str(ROOT / "bench/tmp"))
    args = ap.parse_args()
    tmp = Path(args.tmp)
    shutil.rmtree(tmp / "fanout", ignore_errors=True)
    result = {"machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                          "python": platform.python_version(), "gpu": None},
              "preset": "tiny (random-init models of the real classes)", "when": time.strftime("%Y-%m-%d %H:%M")}
    for d in tmp.glob("mem_*"):
        shutil.rmtree(d)
    for d in list(tmp.glob("single_*")) + [tmp / "warm"]:
        shutil.rmtree(d, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save = lambda: Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # noqa: E731 - partial results survive
    result["memory"] = [bench_memory(tmp, int(n), args.num_cpus) for n in args.sizes.split(",")]
    save()
    result["fanout"] = bench_fanout(tmp, args.videos, args.num_cpus)
    save()
    f = result["fanout"]
    print(f"fan-out: 1 pass x {f['k']} modalities {f['fanout']['wall_s']} s vs {f['k']} single passes "
          f"{f['single_total_wall_s']} s -> {f['speedup_single_over_fanout']}x; decodes {f['decodes_fanout']} vs "
          f"{f['decodes_singles']}")
    for m in result["memory"]:
        print(f"peak memory, {m['videos']} videos: {m['peak_rss_mib']} MiB (wall {m['wall_s']} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
