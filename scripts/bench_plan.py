# make bench   (or alone: python scripts/bench_plan.py [--videos 120] [--skip-pools])
"""Does `make plan` predict `make extract`? And what do measured pools save over equal shares?
-> bench/results/plan.json (key: <videos>-video demo).

1. `scripts/plan.py` on the demo (tiny preset, its own local Ray) predicts wall and store bytes;
   `scripts/extract.py` with the same config then runs for real (the process's wall, the store's
   bytes on disk as du counts them, plan.json aside). Both figures and their errors are stored.
2. Pools: the plan also answers for a stages-plan cluster of 16 logical CPUs (`plan.cpus=16`);
   the same extraction runs twice on such a local Ray (`ray.num_cpus=16 plan.mode=stages`), once
   with equal shares (`plan.measured=false`) and once with the pools plan.json sizes. Predicted
   and measured gain are both stored. The machine's load average is recorded beside them: the
   machine is shared, and a loaded machine stretches every wall.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.plan import disk_bytes  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "plan.json"
POOL_CPUS = 16  # logical: the tiny preset fixes decode and writer at one actor; 14 left for six extractors


def cli(script: str, env: dict, *overrides: str) -> tuple[float, str]:
    """(wall seconds, stdout) of one real CLI run."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"error: {script} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, proc.stdout


def store_disk_bytes(root: Path) -> int:
    return sum(disk_bytes(p) for p in root.rglob("*") if p.is_file() and p.name != "plan.json")


def plan_detail(plan: dict) -> dict:
    """What the prediction was made of (plan.json): fixed costs, the sample, the stage costs and
    the stages-plan answers (equal vs measured pools) for the POOL_CPUS cluster."""
    pool = next((c for c in plan["clusters"] if c["cluster"] == {"CPU": POOL_CPUS, "GPU": 0}), None)
    return {"fixed_s": {k: round(v, 1) for k, v in plan["fixed_s"].items()},
            "sample": {k: plan["sample"][k] for k in ("shard_size", "shards", "actors", "wall_s", "busy_s")},
            "stage_seconds_per_video": {k: round(v, 3) for k, v in plan["stage_seconds_per_video"].items()},
            "pools_predicted": pool and {
                "cluster": pool["cluster"], "equal": pool["stages_today"]["pools"],
                "measured": pool["stages_balanced"]["pools"],
                "wall_s": {"equal": round(pool["stages_today"]["wall_s"], 1),
                           "measured": round(pool["stages_balanced"]["wall_s"], 1)},
                "gain": round(1 - pool["stages_balanced"]["wall_s"] / pool["stages_today"]["wall_s"], 3)}}


def predict_and_run(tmp: Path, env: dict, common: list[str], reuse_plan: bool = False) -> dict:
    """make plan, then make extract: the prediction against the measurement (``reuse_plan``: the
    plan.json of the last run, when its extract did not finish; the store is made anew)."""
    store = tmp / "out" / "demo"
    if reuse_plan:
        plan_wall, line = None, json.loads((store / "plan.json").read_text())
        for path in store.iterdir():
            if path.name != "plan.json":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        plan_wall, out = cli("plan.py", env, *common, f"out={tmp}/out", f"plan.cpus={POOL_CPUS}", "plan.gpus=0")
        line = json.loads(out.strip().splitlines()[-1])
    wall, _ = cli("extract.py", env, *common, f"out={tmp}/out")
    stored = store_disk_bytes(tmp / "out" / "demo")
    return {"plan_wall_s": plan_wall and round(plan_wall, 1), "plan_reused": reuse_plan, "predicted_wall_s": round(line["predicted_wall_s"], 1),
            "measured_wall_s": round(wall, 1), "wall_error": round(line["predicted_wall_s"] / wall - 1, 3),
            "predicted_store_bytes": line["predicted_store_bytes"], "measured_store_bytes": stored,
            "bytes_error": round(line["predicted_store_bytes"] / stored - 1, 3), "bottleneck": line["bottleneck"],
            "plan": plan_detail(json.loads((store / "plan.json").read_text()))}


def pools(tmp: Path, env: dict, common: list[str]) -> dict:
    """Equal shares against measured pools on a local Ray of POOL_CPUS logical CPUs (stages plan)."""
    plan = json.loads((tmp / "out" / "demo" / "plan.json").read_text())
    answer = next(c for c in plan["clusters"] if c["cluster"] == {"CPU": POOL_CPUS, "GPU": 0})
    walls = {}
    for name, measured in (("equal", "false"), ("measured", "true")):
        out = tmp / f"pools-{name}"
        shutil.rmtree(out, ignore_errors=True)
        (out / "demo").mkdir(parents=True)
        shutil.copy(tmp / "out" / "demo" / "plan.json", out / "demo" / "plan.json")
        walls[name], _ = cli("extract.py", env, *common, f"out={out}", f"ray.num_cpus={POOL_CPUS}",
                             "plan.mode=stages", f"plan.measured={measured}")
    today, balanced = answer["stages_today"], answer["stages_balanced"]
    return {"cluster": answer["cluster"], "pools_equal": today["pools"], "pools_measured": balanced["pools"],
            "predicted_wall_s": {"equal": round(today["wall_s"], 1), "measured": round(balanced["wall_s"], 1)},
            "predicted_gain": round(1 - balanced["wall_s"] / today["wall_s"], 3),
            "measured_wall_s": {k: round(v, 1) for k, v in walls.items()},
            "measured_gain": round(1 - walls["measured"] / walls["equal"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--skip-pools", action="store_true", help="only the prediction against make extract")
    ap.add_argument("--reuse-plan", action="store_true", help="keep the last run's plan.json; run extract only")
    ap.add_argument("--only-pools", action="store_true", help="only the pools' runs, on the plan.json of the last run")
    args = ap.parse_args()
    tmp = ROOT / "bench" / "tmp" / f"plan-{args.videos}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CREMA_DATA"] = str(tmp / "data")
    common = ["dataset=demo", "features=tiny", f"dataset.num_videos={args.videos}"]
    if args.only_pools:
        row = json.loads(RESULTS.read_text())[f"{args.videos}-video demo"]
        row["pools"] = {"load_avg_before": [round(x, 1) for x in os.getloadavg()], **pools(tmp, env, common)}
        save(f"{args.videos}-video demo", row)
        return
    load = os.getloadavg()
    row = {"videos": args.videos, "load_avg_before": [round(x, 1) for x in load], "cores": os.cpu_count(),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           **predict_and_run(tmp, env, common, reuse_plan=args.reuse_plan)}
    save(f"{args.videos}-video demo", row)  # the prediction is kept even if the pools' runs do not finish
    if not args.skip_pools:
        row["pools"] = pools(tmp, env, common)
        save(f"{args.videos}-video demo", row)
    print(json.dumps(row))


def save(key: str, row: dict) -> None:
    row["load_avg_after"] = [round(x, 1) for x in os.getloadavg()]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = row
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
