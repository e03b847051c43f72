# make bench        (or by itself: python scripts/bench_startup.py --repeats 3 --videos 120)
"""`make extract` on the demo as a user runs it: cold, its own local Ray, a subprocess -> bench/results/startup.json.

Each repeat runs `scripts/extract.py dataset=demo features=tiny` into a fresh store with no
RAY_ADDRESS (so it starts and stops its own Ray, its actors and their decode children), timed
from outside. Recorded per run: the wall, the summed stage busy seconds of its report, wall /
(busy / CPUs) (1.0 = both cores busy with stage work all the time), the driver's phases and every
actor's start-up (report.json's `phases_s`, `actor_startup`), the lines of Ray's own that say
WARNING or ERROR, and the load average before and after (other work on the machine inflates
every figure). The medians go into the summary; `scripts/bench.py`'s table shows them next to
the warm figure (its runs on a Ray started and warmed up once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "startup.json"
# Ray's own log lines: its Python loggers ("2026-... WARNING worker.py:..") and its C++ core
# ("[2026-... E 123 123] core_worker.cc:..."); our own log lines name a crema.* logger instead.
RAY_ALERT = re.compile(r"\d{4}-\d\d-\d\d \S+\s+(WARNING|ERROR) \S+\.py:\d+ --|\[[^\]]* [WEF] \d+ \d+\] \S+\.cc:\d+")


def ray_alerts(output: str) -> list[str]:
    """Ray's own WARNING / ERROR lines in a run's output (progress-bar redraws split off)."""
    lines = [part for line in output.splitlines() for part in line.split("\r")]
    return [line.strip()[:300] for line in lines if RAY_ALERT.search(line.strip())]


def cold_run(tmp: Path, index: int, videos: int, data: Path, code: Path = ROOT) -> dict:
    """One `scripts/extract.py` run (of the checkout `code`) on its own Ray, into a new store; its figures."""
    out = tmp / f"cold_{index}"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    if code != ROOT:  # its packages before this checkout's (installed editable in the venv)
        env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, str(code / "scripts/extract.py"), "dataset=demo", "features=tiny",
           f"dataset.root={data}", f"dataset.num_videos={videos}", f"out={out}"]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: the extract run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = json.loads((out / "demo" / "report.json").read_text())["run"]
    busy = sum(run["stage_seconds"].values())
    cpus = os.cpu_count() or 1
    phases = dict(run.get("phases_s") or {})
    # what the process did after its report: Ray's and the actors' shutdown, the interpreter's exit
    phases["exit"] = round(wall - phases.get("process_to_run", 0.0) - run["wall_seconds"], 3)
    return {"wall_s": round(wall, 2), "busy_s": round(busy, 2), "ratio": round(wall / (busy / cpus), 3),
            "first_shard_s": run.get("first_shard_seconds"), "phases_s": phases,
            "actor_startup": run.get("actor_startup", []), "ray_alerts": ray_alerts(proc.stdout + proc.stderr),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def summarise(runs: list[dict]) -> dict:
    """Medians over the runs (wall, busy, ratio, phases, actor start-up parts)."""
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    phases = sorted({k for r in runs for k in r["phases_s"]})
    actors = [a for r in runs for a in r["actor_startup"]]
    return {"wall_s": med([r["wall_s"] for r in runs]), "busy_s": med([r["busy_s"] for r in runs]),
            "ratio": med([r["ratio"] for r in runs]),
            "phases_s": {k: med([r["phases_s"].get(k, 0.0) for r in runs]) for k in phases},
            "actor_startup_s": {k: med([a[k] for a in actors]) for k in ("process_s", "import_s", "build_s", "init_s")}
            if actors else {},
            "ray_alert_lines": sum(len(r["ray_alerts"]) for r in runs),
            "loadavg_1min": [r["loadavg_before"][0] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--code", type=Path, default=ROOT,
                    help="the checkout whose extract runs (e.g. a worktree of an older commit: before/after figures)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.demo import generate_demo

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        data = generate_demo(tmp / "data" / "demo", num_videos=args.videos)  # made before timing
        runs = []
        for i in range(args.repeats):
            runs.append(cold_run(tmp, i, args.videos, data, args.code.resolve()))
            r = runs[-1]
            print(f"[{i + 1}/{args.repeats}] cold make extract, {args.videos} videos: wall {r['wall_s']} s, busy "
                  f"{r['busy_s']} s, wall / (busy / CPUs) {r['ratio']}, load {r['loadavg_before'][0]}; "
                  f"phases {r['phases_s']}; Ray WARNING/ERROR lines {len(r['ray_alerts'])}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"what": "make extract on the demo, cold (own Ray, subprocess), tiny preset", "code": str(args.code),
              "videos": args.videos, "repeats": args.repeats, "cpus": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "summary": summarise(runs), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    print(f"cold make extract (median of {args.repeats}): wall {s['wall_s']} s, busy {s['busy_s']} s, "
          f"wall / (busy / CPUs) {s['ratio']} -> {args.out}")


if __name__ == "__main__":
    main()
