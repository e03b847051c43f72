"""`make plan`: what a whole dataset's extraction will cost, predicted from a measured sample.

1. Probe every video of the manifest from its container (duration, resolution, fps; no decode).
2. Pick a sample spread over the videos' sizes (duration x pixels) and extract it with the real
   graph and preset into a scratch store on the Ray cluster the run is given.
3. Read the sample's shard markers: per stage seconds per video (and per frame), the bytes each
   video and each shard leave on disk, and the fixed costs (start-up, Ray, actor start).
4. Predict for the whole dataset (`predict_cluster`), on this cluster and on another shape:

       wall = fixed + steady + fill
       fixed  = the sample run's wall less its own steady part, plus the process and Ray start-up
       steady = fused plan: the shards' work packed onto the fused actors (longest first)
                stages plan: the slowest pool, max over stages of (work / actors), and never
                less than all CPU work / CPUs (actors beyond the cores only share them)
       fill   = stages plan: one shard's trip through every stage (the pipeline filling up)

   The stage costs are those of the devices the sample ran on: predict a GPU cluster from a
   sample run on one of its nodes. `plan.json` beside the store records it all; `resources:
   auto` reads it back to size the stage pools (pipeline.resources.balance_pools).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from core import random_weights
from core.features import combined_hash, modality_hashes, resolve_features
from core.store import MARKER, read_marker
from core.util import to_plain, write_json_atomic
from pipeline.manifest import new_shards
from pipeline.resources import (PLAN_FILE, choose_plan, cluster_shape, describe, describe_fused, fit_fused,
                                 fit_resources, stage_nodes)

log = logging.getLogger("crema.plan")

# marker timing names -> stage names of pipeline.resources
STAGE_OF_TIMING = {"write": "writer"}


def probe_video(path: str) -> dict:
    """Duration (s), width, height, fps and file bytes of one video from its container's headers."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = (float(stream.duration * stream.time_base) if stream.duration
                        else (container.duration or 0) / 1e6)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            return {"duration_s": duration, "width": stream.codec_context.width,
                    "height": stream.codec_context.height, "fps": fps, "bytes": os.path.getsize(path)}
    except Exception as exc:  # a broken video is a finding of the probe, not a reason to stop it
        return {"error": f"{type(exc).__name__}: {exc}"}


def probe_videos(videos, workers: int = 8) -> dict[str, dict]:
    """{video_id: probe} for every video (threads: opening a container mostly waits on the disk)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = pool.map(lambda v: probe_video(v.path), videos)
        return {v.video_id: p for v, p in zip(videos, found)}


def _size(p: dict) -> float:
    return p["duration_s"] * p["width"] * p["height"]


def pick_sample(probes: dict[str, dict], n: int) -> list[str]:
    """``n`` videos at evenly spaced quantiles of size (duration x pixels): the sample's mean is
    the dataset's, and its smallest and largest videos are near the dataset's extremes."""
    ok = sorted((v for v, p in probes.items() if "error" not in p), key=lambda v: (_size(probes[v]), v))
    if n >= len(ok):
        return ok
    return [ok[min(len(ok) - 1, int((i + 0.5) * len(ok) / n))] for i in range(n)]


def summarize_probes(probes: dict[str, dict]) -> dict:
    """The dataset's durations and resolutions, as `make plan` prints them."""
    ok = [p for p in probes.values() if "error" not in p]
    res: dict[str, int] = {}
    for p in ok:
        res[f"{p['width']}x{p['height']}"] = res.get(f"{p['width']}x{p['height']}", 0) + 1
    durations = [p["duration_s"] for p in ok] or [0.0]
    return {"videos": len(probes), "unreadable": sorted(v for v, p in probes.items() if "error" in p),
            "duration_s": {"min": min(durations), "mean": sum(durations) / len(durations), "max": max(durations),
                           "total": sum(durations)},
            "resolutions": dict(sorted(res.items(), key=lambda kv: -kv[1])),
            "source_bytes": sum(p["bytes"] for p in ok)}


def disk_bytes(path: Path) -> int:
    """Bytes a file takes on disk (allocated blocks, as du counts them)."""
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def store_bytes(root: Path, markers: dict) -> dict:
    """The scratch store's bytes on disk split into what grows with videos (array chunks, per
    array name), with shards (metadata, markers) and once per store (manifest, store.json)."""
    per_array: dict[str, int] = {}
    shard_meta = 0
    for rel in markers:
        shard = root / rel
        for path in shard.rglob("*"):
            if not path.is_file():
                continue
            parts = path.relative_to(shard).parts
            if len(parts) > 2 and parts[1] == "c":  # zarr v3 chunk keys: <array>/c/...
                per_array[parts[0]] = per_array.get(parts[0], 0) + disk_bytes(path)
            else:
                shard_meta += disk_bytes(path)
    top = sum(disk_bytes(p) for p in root.iterdir() if p.is_file() and p.name != PLAN_FILE)
    videos = sum(len(m["video_ids"]) for m in markers.values()) or 1
    return {"per_video": {k: v / videos for k, v in sorted(per_array.items())},
            "per_shard": shard_meta / max(1, len(markers)), "per_store": top,
            "sample_total": sum(per_array.values()) + shard_meta + top}


def warm_markers(markers: dict, actors: int) -> list[dict]:
    """The shards an actor ran after its first: a first shard also pays the models' first calls
    (allocations, lazy initialisation), which the fixed costs hold instead. All of them when
    every shard was some actor's first."""
    ordered = sorted(markers.values(), key=lambda m: m.get("written_at", 0.0))
    return ordered[actors:] if len(ordered) > actors else ordered


def stage_costs(markers: dict, run_seconds: dict, frames_per_video: int, actors: int) -> tuple[dict, dict, list[float]]:
    """(seconds per video per stage, seconds per frame per stage, each shard's busy seconds at
    those costs) of one warm actor, whichever plan ran the sample. A stage the markers on disk
    do not time (the writer: its marker is written before its time is known) comes from the
    run's summed stage seconds (``run_seconds``) over all the sample's videos."""
    warm = warm_markers(markers, actors)
    warm_videos = max(1, sum(len(m["video_ids"]) for m in warm))
    videos = max(1, sum(len(m["video_ids"]) for m in markers.values()))
    marked = {n for m in warm for n in m["timings"]}
    per_video = {STAGE_OF_TIMING.get(k, k): (sum(m["timings"].get(k, 0.0) for m in warm) / warm_videos
                                             if k in marked else v / videos) for k, v in run_seconds.items()}
    per_frame = {k: v / max(1, frames_per_video) for k, v in per_video.items()}
    busy = [sum(per_video.values()) * len(m["video_ids"]) for m in markers.values()]
    return per_video, per_frame, busy


def pack(jobs: list[float], workers: int) -> float:
    """Makespan of ``jobs`` seconds on ``workers`` (longest first, each to the least loaded)."""
    loads = [0.0] * max(1, workers)
    for job in sorted(jobs, reverse=True):
        loads[loads.index(min(loads))] += job
    return max(loads)


def shard_sizes(videos, shard_size: int) -> list[int]:
    """Videos per shard a fresh store of ``videos`` gets (pipeline.manifest's grouping)."""
    return [len(s.video_ids) for s in new_shards(list(videos), shard_size, [])]


def _pools(features: dict, store_cfg: dict) -> dict[str, dict]:
    return {n: {"actors": int(r["concurrency"]), "num_cpus": float(r["num_cpus"]),
                "num_gpus": float(r.get("num_gpus") or 0)} for n, r in stage_nodes(features, store_cfg).items()}


def stages_wall(costs: dict, pools: dict, videos: int, shard_videos: float, cpus: float) -> tuple[float, str]:
    """(steady + fill seconds, bottleneck stage) of the per-stage plan with ``pools``."""
    work = {n: costs.get(n, 0.0) * videos for n in pools}
    per_pool = {n: work[n] / pools[n]["actors"] for n in pools}
    bottleneck = max(per_pool, key=per_pool.get)
    cpu_work = sum(w for n, w in work.items() if not pools[n]["num_gpus"])
    steady = max(per_pool[bottleneck], cpu_work / cpus if cpus else 0.0)
    fill = sum(costs.get(n, 0.0) for n in pools) * shard_videos
    return steady + fill, bottleneck


def predict_cluster(features: dict, store_cfg: dict, plan_cfg: dict, have: dict, *, costs: dict, fixed_s: float,
                    shards: list[int]) -> dict:
    """What the whole dataset costs on a cluster with ``have``: today's pools and measured (balanced)
    ones, the plan `make extract` would pick, its wall, GPU hours and bottleneck."""
    videos, cpus, gpus = sum(shards), float(have.get("CPU", 0)), float(have.get("GPU", 0))
    mean_shard = videos / max(1, len(shards))
    plan, why = choose_plan(plan_cfg.get("mode", "auto"), features, store_cfg, have)
    fused = fit_fused(plan_cfg.get("fused") or {}, features, have, shards=len(shards))
    per_video = sum(costs.values())
    fused_wall = fixed_s + max(pack([per_video * k for k in shards], int(fused["concurrency"])),
                               per_video * videos / cpus if cpus else 0.0)
    today = fit_resources(features, store_cfg, have)
    balanced = fit_resources(features, store_cfg, have, costs=costs)
    today_s, today_neck = stages_wall(costs, _pools(*today[:2]), videos, mean_shard, cpus)
    bal_s, bal_neck = stages_wall(costs, _pools(*balanced[:2]), videos, mean_shard, cpus)
    wall = fused_wall if plan == "fused" else fixed_s + bal_s
    neck = max(costs, key=costs.get) if plan == "fused" else bal_neck
    gpu_busy = sum(costs.get(n, 0.0) * videos for n, p in _pools(*balanced[:2]).items() if p["num_gpus"])
    return {"cluster": cluster_shape(have), "plan": plan, "why": why, "predicted_wall_s": wall, "bottleneck": neck,
            "gpu_hours": wall * gpus / 3600, "gpu_busy_hours": gpu_busy / 3600,
            "fused": {"pools": describe_fused(fused), "wall_s": fused_wall},
            "stages_today": {"pools": describe(*today[:2]), "wall_s": fixed_s + today_s, "bottleneck": today_neck},
            "stages_balanced": {"pools": describe(*balanced[:2]), "wall_s": fixed_s + bal_s, "bottleneck": bal_neck}}


def predict_bytes(sizes: dict, shards: list[int]) -> int:
    """The store's bytes on disk for shards of these sizes (sample's per-video, per-shard, per-store bytes)."""
    per_video = sum(sizes["per_video"].values())
    return int(sizes["per_store"] + sizes["per_shard"] * len(shards) + per_video * sum(shards))


def _process_age() -> float:
    """Seconds since this process started (imports, Hydra): a `make extract` pays them too."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def _timed_ray_start(ray_cfg: dict) -> float:
    from pipeline.extract import start_ray

    t0 = time.perf_counter()
    start_ray(ray_cfg)
    return time.perf_counter() - t0


def run_sample(cfg, index, sample: list[str], scratch: Path, shard_size: int) -> tuple[dict, dict, float]:
    """Extract the ``sample`` videos with the real graph into a fresh scratch store; (report,
    markers, wall seconds)."""
    from pipeline.extract import run_extract

    shutil.rmtree(scratch, ignore_errors=True)
    sub = copy.deepcopy(cfg)
    OmegaConf.set_struct(sub, False)
    sub.out, sub.store.shard_size, sub.store.overwrite = str(scratch), shard_size, True
    chosen = set(sample)
    t0 = time.perf_counter()
    report = run_extract(sub, index=replace(index, videos=[v for v in index.videos if v.video_id in chosen]))
    wall = time.perf_counter() - t0
    root = scratch / index.name
    markers = {str(p.parent.relative_to(root)): read_marker(p.parent) for p in root.glob(f"*/*.zarr/{MARKER}")}
    return report, {k: m for k, m in markers.items() if m}, wall


def _other_cluster(plan_cfg: dict) -> dict | None:
    if plan_cfg.get("gpus") is None and plan_cfg.get("cpus") is None:
        return None
    return {"CPU": float(plan_cfg.get("cpus") or 0), "GPU": float(plan_cfg.get("gpus") or 0)}


def measure(cfg, index, features: dict, plan_cfg: dict, process_s: float) -> dict:
    """Probe the dataset, run the sample on the Ray cluster, and return what was measured
    (``process_s``: this process's start-up before planning, which `make extract` pays too)."""
    import ray

    probes = probe_videos(index.videos)
    sample = pick_sample(probes, int(plan_cfg.get("sample") or 8))
    if not sample:
        raise ValueError(f"no video of {index.name} could be opened (e.g. {next(iter(probes.items()), None)})")
    ray_start_s = _timed_ray_start(to_plain(cfg.ray))
    have = ray.cluster_resources()
    actors = int(fit_fused(plan_cfg.get("fused") or {}, features, have, shards=len(sample))["concurrency"])
    # two shards per fused actor: they contend for the cores as in the real run, and each actor's
    # second shard is timed warm (warm_markers)
    shard_size = math.ceil(len(sample) / (2 * max(1, actors)))
    scratch = Path(cfg.out) / f".plan-{index.name}"
    report, markers, wall = run_sample(cfg, index, sample, scratch, shard_size)
    frames = int(features["decode"].get("num_frames_stored") or features["decode"].get("num_frames") or 1)
    costs, per_frame, busy = stage_costs(markers, report["run"]["stage_seconds"], frames, actors)
    sizes = store_bytes(scratch / index.name, markers)
    t0 = time.perf_counter()
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        ray.shutdown()  # a local Ray's shutdown is part of a run's wall
    shutdown_s = time.perf_counter() - t0
    if not plan_cfg.get("keep_scratch"):
        shutil.rmtree(scratch, ignore_errors=True)
    run_overhead = max(0.0, wall - pack(busy, actors))
    return {"have": have, "probes": summarize_probes(probes), "sample": {
                "videos": sample, "shard_size": shard_size, "shards": len(markers), "actors": actors, "wall_s": wall,
                "busy_s": sum(busy)},
            "fixed_s": {"process": process_s, "ray_start": ray_start_s, "run_overhead": run_overhead,
                        "ray_shutdown": shutdown_s},
            "stage_seconds_per_video": costs, "stage_seconds_per_frame": per_frame, "bytes": sizes}


def run_plan(cfg) -> dict:
    """`make plan`: measure a sample, predict the dataset on this cluster (and on plan.gpus/plan.cpus),
    write plan.json beside the store and return it."""
    from core.datasets import load_dataset
    from pipeline.demo import ensure_demo

    process_s = _process_age()
    features = resolve_features(cfg.features)
    store_cfg, plan_cfg = to_plain(cfg.store), to_plain(cfg.get("plan")) or {}
    ensure_demo(cfg.dataset)
    index = load_dataset(cfg.dataset)
    m = measure(cfg, index, features, plan_cfg, process_s)
    shards = shard_sizes(index.videos, int(store_cfg["shard_size"]))
    fixed = sum(m["fixed_s"].values())
    clusters = [predict_cluster(features, store_cfg, plan_cfg, have, costs=m["stage_seconds_per_video"],
                                fixed_s=fixed, shards=shards)
                for have in filter(None, (m.pop("have"), _other_cluster(plan_cfg)))]
    here = clusters[0]
    result = {"dataset": index.name, "preset": features.get("preset"), "weights": random_weights.mode(cfg),
              "config_hash": combined_hash(modality_hashes(cfg.features)), "measured_on": here["cluster"],
              "videos": len(index.videos), "shards": len(shards), **m, "clusters": clusters,
              "predicted_wall_s": here["predicted_wall_s"], "predicted_store_bytes": predict_bytes(m["bytes"], shards),
              "bottleneck": here["bottleneck"]}
    path = Path(cfg.out) / index.name / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result, indent=2, sort_keys=False, newline=True)
    result["plan_json"] = str(path)
    return result


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def table(result: dict) -> str:
    """What a person reads: the dataset, the sample's measurements, and each cluster's answer."""
    p, s, b = result["probes"], result["sample"], result["bytes"]
    lines = [f"== plan {result['dataset']} ({result['preset']}, weights {result['weights']}): {p['videos']} videos, "
             f"{p['duration_s']['total'] / 3600:.2f} h of video (mean {p['duration_s']['mean']:.1f} s), "
             f"{len(p['unreadable'])} unreadable; resolutions " + ", ".join(
                 f"{k} x{v}" for k, v in list(p["resolutions"].items())[:4]),
             f"   sample: {len(s['videos'])} videos in {s['shards']} shards, {s['wall_s']:.1f} s wall "
             f"({s['busy_s']:.1f} s of warm work on {s['actors']} actors); fixed costs " + ", ".join(
                 f"{k} {v:.1f} s" for k, v in result["fixed_s"].items()),
             "   stage       s/video   s/frame"]
    for name, sec in result["stage_seconds_per_video"].items():
        lines.append(f"   {name:<10} {sec:>8.3f} {result['stage_seconds_per_frame'][name]:>9.4f}")
    lines.append("   bytes per video: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in b["per_video"].items())
                 + f"; per shard {b['per_shard'] / 1024:.1f} KiB")
    lines.append(f"   store: {result['predicted_store_bytes'] / 2**20:.1f} MiB predicted for {result['videos']} videos "
                 f"in {result['shards']} shards")
    for c in result["clusters"]:
        lines.append(f"   cluster {c['cluster']['CPU']} CPUs, {c['cluster']['GPU']} GPUs -> plan {c['plan']}: "
                     f"{_hms(c['predicted_wall_s'])} wall, {c['gpu_hours']:.2f} GPU hours, bottleneck {c['bottleneck']}")
        for key in ("fused", "stages_today", "stages_balanced"):
            lines.append(f"     {key:<16} {_hms(c[key]['wall_s']):>10}  {c[key]['pools']}")
    return "\n".join(lines)


def last_line(result: dict) -> str:
    """The one JSON line `make plan` ends with."""
    keys = ("dataset", "preset", "predicted_wall_s", "predicted_store_bytes", "bottleneck", "plan_json")
    return json.dumps({**{k: result.get(k) for k in keys},
                       "clusters": [{k: c[k] for k in ("cluster", "plan", "predicted_wall_s", "gpu_hours", "bottleneck")}
                                    for c in result["clusters"]]})
