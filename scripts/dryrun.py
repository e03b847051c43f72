# make dryrun [OUT=outputs/dryrun]    (== python scripts/dryrun.py --out outputs/dryrun)
"""A full-size dry run with random weights: the full presets on a few demo videos, then a few
full-size training steps on that store. Nothing is downloaded (weights=random).

Runs the real CLIs as child processes (extraction through the real Ray graph, then training),
samples the resident memory of each child's whole process tree (Ray's daemons and actors
included) every half second, and prints one JSON object as its last line: per modality the
shape it stored, the training steps and losses, and each phase's wall seconds and peak memory.
It is not part of CI (minutes and ~12 GiB for the Flan-T5-XL-size steps); docs/benchmarks.md
has the figures of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def tree_rss(pid: int) -> int:
    """Proportional resident bytes (PSS: a page shared by n processes counts 1/n in each) of a
    process and everything under it (0 once it is gone). Plain RSS would count the pages that
    forked children (DataLoader workers) share with their parent once per process."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def run_measured(name: str, argv: list[str], log: Path, timeout_s: float) -> dict:
    """Run a child to its end, sampling its tree's RSS; its output goes to `log`."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        peak, loads, done = [0], [], threading.Event()

        def sample():
            while not done.wait(0.5):
                peak[0] = max(peak[0], tree_rss(proc.pid))
                loads.append(os.getloadavg()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    print(f"dryrun: {name}: exit {rc} in {wall:.0f} s, peak {peak[0] / GIB:.1f} GiB (log: {log})", flush=True)
    # the machine's load beside it: wall seconds on a shared 2-core machine mean little without it
    load = [round(min(loads), 1), round(max(loads), 1)] if loads else None
    return {"exit": rc, "wall_s": round(wall, 1), "peak_pss_gib": round(peak[0] / GIB, 2), "load_1min_range": load,
            "log": str(log)}


def stored_shapes(store: Path) -> dict:
    from core.store import FeatureStore

    fs = FeatureStore(store)
    return {"videos": len(fs), **{m: list(info["shape"]) + [info["dtype"]] for m, info in sorted(fs.modalities.items())}}


def training_steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [{"step": r["step"], "loss": r["loss"]} for r in rows if r.get("event") == "step"]


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/dryrun")
    ap.add_argument("--videos", type=int, default=3, help="demo videos (3 at least: one per split)")
    ap.add_argument("--frames", type=int, default=2, help="stored frames per video")
    ap.add_argument("--steps", type=int, default=2, help="full-size training steps")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per phase")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    common = [f"dataset.root={out / 'data'}", "dataset=demo", f"dataset.num_videos={args.videos}",
              "features=full", "weights=random", f"features.decode.num_frames_stored={args.frames}", f"out={out}"]
    # One fused actor: every model once in memory (the machine this must finish on has 24 GiB).
    extract = run_measured("extract", [py, "scripts/extract.py", *common, "plan.mode=fused", "plan.fused.concurrency=1",
                                       f"store.shard_size={args.videos}", "store.overwrite=true"],
                           out / "extract.log", args.timeout)
    result: dict = {"extract": extract}
    if extract["exit"] == 0:
        result["stored"] = stored_shapes(out / "demo")
        run_dir = out / "train"
        train = run_measured("train", [py, "scripts/train.py", *common, f"run_dir={run_dir}",
                                       f"trainer.max_steps={args.steps}", "trainer.log_every=1",
                                       # one question per step: with the full recipe's global batch (8 or
                                       # more) a step would accumulate over whole epochs of the 3 questions
                                       "trainer.batch_size=1", "trainer.global_batch=1",
                                       # no forked loader workers: each would share (and touch) the ~17 GiB parent
                                       "trainer.data.num_workers=0",
                                       "trainer.resume=never"], out / "train.log", args.timeout)
        result.update(train=train, steps=training_steps(run_dir))
    ok = extract["exit"] == 0 and result.get("train", {}).get("exit") == 0 and len(result.get("steps", [])) == args.steps
    result["ok"] = ok
    (out / "dryrun.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if not ok:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
