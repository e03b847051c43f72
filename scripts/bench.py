# make bench        (or: python scripts/bench.py --videos 12 --scale 10 --repeats 2)
"""Extraction benchmarks -> bench/results/extract.json, and the table of docs/benchmarks.md.

Everything runs in this one process on one local Ray started once and warmed up once, with
runs of different kinds interleaved (A B A B ...) so that a change of the machine's load hits
every kind alike; figures are medians over the repeats.

1. The demo extraction under both plans (pipeline/graph.py), at 1x and 10x the videos: wall,
   summed stage busy time, efficiency = (busy / CPUs) / wall, time to the first shard, the
   payload bytes each stage hands on, and peak memory counted once per page (the PSS of this
   process and every process under it: the Ray daemons, the actors, their decode sandboxes).
   Memory is measured on `scripts/extract.py` run as a subprocess (as `make extract`: its own
   Ray, the default plan), 1x and 10x interleaved. Each timed run starts once the previous
   run's actors have exited (`wait_for_quiet`). Then one run of `--long` videos (1200) with the
   default plan: the start-up is paid once per run, and this shows what is left of it at scale.
2. Fan-out: one pass computing all K modalities (one decode per video) against K one-modality
   passes (K decodes per video), interleaved.
3. What a hop costs: pickling and unpickling a payload of the measured size.
4. The rows of bench/results/reference.json (scripts/bench_reference.py) and train.json
   (scripts/bench_train.py) when those have run, so the table is in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20


def compose(config_name: str, overrides: list[str]):
    """conf/<config_name>.yaml with overrides (the bench scripts' one way to read the config)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def demo(tmp: Path, n: int) -> list[str]:
    return ["dataset=demo", f"dataset.root={tmp}/data/demo_{n}", f"dataset.num_videos={n}"]


def tree_pss(root: psutil.Process) -> int:
    """Bytes of memory ``root`` and all its descendants use, each shared page counted once
    (proportional set size; RSS where smaps cannot be read)."""
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total


def memory_run(tmp: Path, n: int, num_cpus: int) -> dict:
    """`scripts/extract.py` as a user runs it (its own Ray, the default plan) on n demo videos,
    its process tree's PSS sampled every 0.5 s: the peak is the run's memory, pages counted once."""
    out = tmp / f"mem_{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "scripts/extract.py"), *demo(tmp, n), f"out={out}", f"ray.num_cpus={num_cpus}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, samples, stop = psutil.Process(proc.pid), [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(tree_pss(root))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    log, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"extract failed for {n} videos:\n{log[-3000:]}")
    report = json.loads((out / "demo" / "report.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"videos": n, "peak_pss_mib": round(max(samples) / MiB), "median_pss_mib": round(statistics.median(samples) / MiB),
            "wall_s": round(time.perf_counter() - t0, 1), "videos_ok": report["videos_ok"], "plan": report["run"]["plan"]}


def wait_for_quiet(timeout_s: float = 60.0) -> float:
    """Seconds waited until no Ray Data actor process of an earlier run is left.

    Ray tears a finished run's actors down in the background after run_extract returns; each
    spends 1-2 s of CPU exiting (measured: 2.7 CPU-s inside the next run's first seconds on 2
    cores). A user's run does not start inside another's teardown, so neither does a timed one.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        busy = False
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                if any("MapWorker" in part for part in [p.info["name"] or "", *(p.info["cmdline"] or [])]):
                    busy = True
                    break
            except psutil.Error:
                pass
        if not busy:
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def extract_once(overrides: list[str], out: Path) -> dict:
    """One run_extract into a fresh store, started once the previous run's actors are gone; the
    figures of its report."""
    from pipeline.extract import run_extract

    shutil.rmtree(out, ignore_errors=True)
    wait_for_quiet()
    cfg = compose("extract", overrides + [f"out={out}"])
    t0 = time.perf_counter()
    report = run_extract(cfg)
    wall = time.perf_counter() - t0
    run = report["run"]
    busy = sum(run["stage_seconds"].values())
    cpus = float(__import__("ray").cluster_resources().get("CPU", 1))
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "busy_s": round(busy, 2), "efficiency": round(busy / cpus / wall, 3),
            "first_shard_s": round(run["first_shard_seconds"], 2), "plan": run["plan"],
            "videos_ok": report["videos_ok"], "videos_decoded": run["videos_decoded"],
            "stage_seconds": run["stage_seconds"], "bytes_per_hop": run["bytes_per_hop"]}


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def hop_cost(nbytes: int, repeats: int = 5) -> dict:
    """Seconds to pickle and unpickle (protocol 5, as the stages plan does per hop) arrays of
    ``nbytes``, in frame-sized pieces like a payload's."""
    pieces = [np.random.default_rng(0).integers(0, 255, (8, 144, 256, 3), np.uint8)
              for _ in range(max(1, nbytes // (8 * 144 * 256 * 3)))]
    payload = {"videos": [{"frames": p} for p in pieces]}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pickle.loads(pickle.dumps(payload, protocol=5))
        times.append(time.perf_counter() - t0)
    return {"bytes": sum(p.nbytes for p in pieces), "seconds": round(statistics.median(times), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12, help="1x: videos of the small runs and the fan-out")
    ap.add_argument("--scale", type=int, default=10, help="the large runs have scale x videos (the demo's 120)")
    ap.add_argument("--repeats", type=int, default=2, help="A B A B ...: runs of each kind")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--skip-fanout", action="store_true")
    ap.add_argument("--long", type=int, default=1200,
                    help="videos of one more run with the default plan: how the fixed start-up amortises (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/extract.json"))
    ap.add_argument("--plot-only", action="store_true", help="print the table and redraw bench/results/bench.png from the JSON files; run nothing")
    ap.add_argument("--tmp", default=str(ROOT / "bench/tmp"))
    args = ap.parse_args()
    if args.plot_only:
        result = json.loads(Path(args.out).read_text())
        print_table(result, args.videos, args.videos * args.scale, args.scale)
        print(f"wrote {plot(result, Path(args.out).with_name('bench.png'))}")
        return
    tmp = Path(args.tmp)
    from pipeline.demo import ensure_demo
    from pipeline.extract import start_ray

    small, large = args.videos, args.videos * args.scale
    for n in (small, large, *([args.long] if args.long else [])):
        ensure_demo(compose("extract", demo(tmp, n)).dataset)  # the videos exist before anything is timed
    start_ray({"num_cpus": args.num_cpus})
    result = {"machine": {"cpus": os.cpu_count(), "ray_cpus": args.num_cpus,
                          "ram_gib": round(psutil.virtual_memory().total / 2**30),
                          "python": platform.python_version(), "gpu": None, "load_before": os.getloadavg()[0]},
              "preset": "tiny (random-init models of the real classes)", "when": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python scripts/bench.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: out.write_text(json.dumps(result, indent=1) + "\n")  # noqa: E731 - partial results survive

    extract_once(demo(tmp, small), tmp / "warm")  # imports, page cache, Ray's worker pool: not timed
    # 1. plans x sizes, interleaved
    kinds = [(plan, n) for n in (large, small) for plan in ("stages", "fused")]
    runs: dict[str, list] = {f"{p}_{n}": [] for p, n in kinds}
    for r in range(args.repeats):
        for plan, n in kinds:
            got = extract_once(demo(tmp, n) + [f"plan.mode={plan}"], tmp / f"run_{plan}_{n}")
            runs[f"{plan}_{n}"].append(got)
            print(f"[{r + 1}/{args.repeats}] {plan:6s} {n:4d} videos: wall {got['wall_s']} s, busy {got['busy_s']} s, "
                  f"efficiency {got['efficiency']}, first shard {got['first_shard_s']} s",
                  flush=True)
            result["runs"] = runs
            save()
    summary = {key: {k: median_of(v, k) for k in ("wall_s", "busy_s", "efficiency", "first_shard_s")}
               for key, v in runs.items()}
    for key, v in runs.items():
        summary[key]["bytes_per_hop_mean"] = v[0]["bytes_per_hop"].get("mean", {})
    result["summary"] = summary
    if args.long:  # one run: the start-up is the same per run, so it shows how it amortises
        got = extract_once(demo(tmp, args.long), tmp / "run_long")
        result["long"] = {"videos": args.long, **got}
        print(f"long run, {args.long} videos (plan {got['plan']}): wall {got['wall_s']} s, busy {got['busy_s']} s, "
              f"efficiency {got['efficiency']}, first shard {got['first_shard_s']} s", flush=True)
        save()
    # memory: the CLI in a subprocess (its own Ray, as `make extract`), 1x and 10x interleaved
    mem: dict[int, list] = {small: [], large: []}
    for r in range(args.repeats):
        for n in (small, large):
            mem[n].append(memory_run(tmp, n, args.num_cpus))
            print(f"[{r + 1}/{args.repeats}] memory, {n} videos: peak PSS {mem[n][-1]['peak_pss_mib']} MiB "
                  f"(plan {mem[n][-1]['plan']}, wall {mem[n][-1]['wall_s']} s)", flush=True)
    result["memory"] = {"runs": mem, "peak_pss_mib": {n: statistics.median(x["peak_pss_mib"] for x in v)
                                                        for n, v in mem.items()}}
    peak = result["memory"]["peak_pss_mib"]
    result["memory"][f"growth_{args.scale}x"] = round(peak[large] / peak[small] - 1, 3)
    hops = summary[f"stages_{large}"]["bytes_per_hop_mean"]
    biggest = max(hops.values()) if hops else 0
    result["hop_cost"] = {"largest_hop_bytes": biggest, **hop_cost(biggest)}
    save()

    # 2. fan-out, interleaved
    if not args.skip_fanout:
        mods = list(compose("extract", demo(tmp, small)).dataset.modalities)  # the demo's (no touch/thermal streams)
        fan, singles = [], []
        for r in range(args.repeats):
            fan.append(extract_once(demo(tmp, small), tmp / "fanout"))
            one = [extract_once(demo(tmp, small) + [f"features.modalities=[{m}]"], tmp / f"single_{m}")
                   for m in mods]
            singles.append({"wall_s": round(sum(s["wall_s"] for s in one), 2), "runs": one,
                            "videos_decoded": sum(s["videos_decoded"] for s in one)})
            print(f"[{r + 1}/{args.repeats}] fan-out {fan[-1]['wall_s']} s vs {len(mods)} single passes "
                  f"{singles[-1]['wall_s']} s", flush=True)
        result["fanout"] = {"videos": small, "k": len(mods), "modalities": mods, "fanout": fan, "singles": singles,
                            "ratio_singles_over_fanout": round(statistics.median(s["wall_s"] for s in singles)
                                                               / statistics.median(f["wall_s"] for f in fan), 2),
                            "decodes": [fan[0]["videos_decoded"], singles[0]["videos_decoded"]]}
        save()
    print_table(result, small, large, args.scale)
    print(f"wrote {out} and {plot(result, out.with_name('bench.png'))}")


def _load(name: str) -> dict | None:
    path = ROOT / "bench/results" / name
    return json.loads(path.read_text()) if path.exists() else None


def plot(result: dict, path: Path) -> Path:
    """Two panels: where an extraction's wall clock goes as the videos grow (both plans, the ideal
    busy / CPUs beneath), and the reference's workflow against this project by phase (reference.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    cpus = result["machine"]["ray_cpus"]
    for plan, color in (("fused", "tab:blue"), ("stages", "tab:orange")):
        pts = sorted((int(k.split("_")[1]), v) for k, v in result["summary"].items() if k.startswith(plan + "_"))
        if plan == result.get("long", {}).get("plan"):
            pts.append((result["long"]["videos"], result["long"]))
        n = [p[0] for p in pts]
        a.plot(n, [p[1]["wall_s"] for p in pts], "o-", color=color, label=f"{plan} plan: wall")
        a.plot(n, [p[1]["busy_s"] / cpus for p in pts], "o:", color=color, alpha=0.6,
               label=f"{plan} plan: stage busy / {cpus} CPUs (the ideal)")
        for x, v in pts:
            a.annotate(f"{1 / v['efficiency']:.2f}x", (x, v["wall_s"]), textcoords="offset points", xytext=(4, 6),
                       fontsize=8, color=color)
    a.set(xscale="log", yscale="log", xlabel="demo videos", ylabel="seconds",
          title="extraction: wall vs its own work (label: wall / ideal)")
    a.set_ylim(top=a.get_ylim()[1] * 1.6)  # room for the labels on the log scale
    a.legend(fontsize=8)
    ref = _load("reference.json")
    if ref:
        per = ref["comparison"]["per_epochs"]
        phases = [("preprocessing", "extraction"), ("encoder", "frozen encoders"), ("data_loading", "waiting for data"),
                  ("optimizer_steps", "optimizer steps")]
        labels, x = [], 0
        for e in sorted(per, key=int):
            for side in ("reference", "project"):
                bottom = 0.0
                for i, (key, name) in enumerate(phases):
                    val = per[e][key][f"{side}_s"]
                    b.bar(x, val, bottom=bottom, color=f"C{i}", label=name if x == 0 else None)
                    bottom += val
                total = per[e]["end_to_end"][f"{side}_s"]  # the rest: the training loop's own time
                b.bar(x, max(0.0, total - bottom), bottom=bottom, color="0.7", label="rest of the loop" if x == 0 else None)
                b.annotate(f"{total:.0f} s", (x, max(total, bottom)), ha="center", va="bottom", fontsize=8)
                labels.append(f"{side}\nE={e}")
                x += 1
            top = max(per[e]["end_to_end"]["reference_s"], per[e]["end_to_end"]["project_s"])
            b.annotate(f"reference / project {per[e]['end_to_end']['ratio']:.2f}x", (x - 1.5, top), ha="center",
                       va="bottom", fontsize=9, xytext=(0, 14), textcoords="offset points")
        b.set_xticks(range(len(labels)), labels, fontsize=8)
        b.set_ylim(top=b.get_ylim()[1] * 1.12)
        b.set(ylabel="seconds", title=f"reference workflow vs this project ({ref['preset']} preset, {ref['videos']} videos)")
        b.legend(fontsize=8)
    fig.suptitle(f"make bench, {result['when']}: {result['machine']['cpus']} CPUs, no GPU, {result['preset']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_table(result: dict, small: int, large: int, scale: int) -> None:
    s = result["summary"]
    rows = []
    for plan in ("stages", "fused"):
        x = s[f"{plan}_{large}"]
        rows.append((f"demo extract, {large} videos, plan {plan}: wall / busy / efficiency",
                     f"{x['wall_s']} s / {x['busy_s']} s / {x['efficiency']} (wall = {1 / x['efficiency']:.2f} x busy/CPUs)"))
        rows.append((f"  time to first shard ({plan})", f"{x['first_shard_s']} s"))
        rows.append((f"  efficiency at {small} videos ({plan})", f"{s[f'{plan}_{small}']['efficiency']}"))
    if "long" in result:
        x = result["long"]
        rows.append((f"  {x['videos']} videos, one run ({x['plan']}): wall / busy / efficiency",
                     f"{x['wall_s']} s / {x['busy_s']} s / {x['efficiency']} (wall = {1 / x['efficiency']:.2f} x busy/CPUs)"))
    cold = _load("startup.json")
    if cold:
        c, warm = cold["summary"], s[f"fused_{large}"]
        rows.append((f"make extract as a user runs it (cold: own Ray, subprocess), {cold['videos']} videos, "
                     f"median of {cold['repeats']}: wall / busy / wall over busy/CPUs (startup.json)",
                     f"{c['wall_s']} s / {c['busy_s']} s / {c['ratio']} (load {c['loadavg_1min']}) vs warm "
                     f"{1 / warm['efficiency']:.2f} (above; target <= 1.3)"))
    m = result["memory"]
    peak = {int(k): v for k, v in m["peak_pss_mib"].items()}  # int keys in a run, strings once read from JSON
    rows.append((f"peak memory of `make extract` (PSS), {small} -> {large} videos",
                 f"{peak[small]:.0f} -> {peak[large]:.0f} MiB ({m[f'growth_{scale}x']:+.1%})"))
    hc = result["hop_cost"]
    rows.append(("largest payload hop (stages plan): bytes, pickle+unpickle",
                 f"{hc['largest_hop_bytes'] / MiB:.1f} MiB, {hc['seconds'] * 1000:.0f} ms"))
    if "fanout" in result:
        f = result["fanout"]
        rows.append((f"fan-out: {f['k']} single passes / one pass ({small} videos, interleaved)",
                     f"{f['ratio_singles_over_fanout']}x (decodes {f['decodes'][1]} vs {f['decodes'][0]})"))
    ref = _load("reference.json")
    if ref:
        per = ref.get("comparison", {}).get("per_epochs", {})
        got = {e: per[e]["end_to_end"]["ratio"] for e in per if "end_to_end" in per[e]}
        rows.append(("reference workflow / this project, end to end (reference.json)",
                     ", ".join(f"E={e}: {r:.2f}x" for e, r in got.items()) or "see the file"))
    train = _load("train.json")
    if train:
        rows.append(("loader samples/s (0 / 2 workers) vs trainer consumption",
                     f"{train['reader_samples_per_s']['workers_0']:.0f} / {train['reader_samples_per_s']['workers_2']:.0f}"
                     f" vs {train['trainer_samples_per_s']:.1f}"))
    store = _load("store_reader.json")
    if store:
        rows.append(("store reader, crc32c check cost per sample, CPU (tiny / full shapes)",
                     f"{store['tiny']['cost_cpu']:+.1%} / {store['full']['cost_cpu']:+.1%} (store_reader.json)"))
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows))


if __name__ == "__main__":
    main()
