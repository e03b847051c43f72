"""Actor pools sized to the Ray cluster a run finds (`resources: auto`).

Each stage (decode, every extractor, the writer) holds a fixed actor pool; its `resources` node
says how big: `num_cpus` and `num_gpus` per actor, `concurrency` actors. Any of the three may be
`auto` (the full presets' default) or a number (a number always wins). `fit_resources` turns the
autos into numbers for the cluster's CPUs and GPUs:

- GPUs go to the stages that can use one (`num_gpus: auto` and `device` auto/cuda): with fewer
  GPUs than such stages, they share (one GPU and four stages: 0.25 each); with more, every such
  stage gets whole GPUs and as many actors as fit. Without a GPU they run on the CPU and the
  run warns how slow that is.
- CPUs: each automatic actor gets one; CPUs left over become more actors of the CPU-only stages
  (decode first); with fewer CPUs than actors, the actors share them (fractions).

So the full preset starts on a laptop, a 1-GPU workstation and a GPU cluster unchanged.

Which plan (pipeline.graph): `plan.mode: auto` runs the per-stage pools where each stage actor can
have at least one whole CPU and no GPU is shared between model stages (a cluster), and the fused
plan otherwise (a laptop, a CI runner, one GPU for depth, flow and the encoder): N actors each
running the whole chain, `fit_fused` sizing them (one CPU each without a GPU; with GPUs,
`actors_per_gpu` actors per GPU, the CPUs split between them).
"""

from __future__ import annotations

import copy
import logging
import math

log = logging.getLogger("crema.resources")

AUTO = "auto"
# The fewest shards an automatic fused actor is started for: each one imports torch and
# transformers and builds its models first (~4.5 s of CPU for the tiny preset on a 2-core machine,
# docs/benchmarks.md), more than a short shard's work, so a second actor for a single extra shard
# costs CPU without shortening the run.
SHARDS_PER_ACTOR = 2
KEYS = ("num_cpus", "num_gpus", "concurrency")
# What running the full preset without a GPU costs (docs/benchmarks.md, 2-core CPU): UniMatch
# alone takes ~10 s per frame pair at 640x360.
CPU_ONLY_NOTE = ("the model stages run on the CPU; with the full preset expect minutes per video (UniMatch flow "
                 "alone ~10 s per frame pair on a 2-core CPU, docs/benchmarks.md). Use a GPU machine for real datasets.")


def _is_auto(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == AUTO)


def _floor(x: float, step: float = 0.01) -> float:
    return max(step, math.floor(x / step + 1e-9) * step)


def stage_nodes(features: dict, store_cfg: dict) -> dict[str, dict]:
    """{stage name: its `resources` node} in pipeline order (decode, extractors, writer)."""
    return {"decode": features["decode"].setdefault("resources", {}),
            **{n: e.setdefault("resources", {}) for n, e in features["extractors"].items()},
            "writer": store_cfg.setdefault("resources", {})}


def wants_gpu(name: str, res: dict) -> bool:
    return name not in ("decode", "writer") and _is_auto(res.get("num_gpus")) and \
        str(res.get("device", "auto")).lower() in ("auto", "cuda")


def fit_resources(features: dict, store_cfg: dict, have: dict, costs: dict | None = None) -> tuple[dict, dict, list[str]]:
    """Copies of (resolved features, store config) with every `auto` made a number for a cluster
    with ``have`` (Ray's cluster_resources: CPU, GPU); plus notes for the log.

    ``costs`` ({stage: seconds per video of one actor}, a measured plan.json) sizes the automatic
    pools by throughput (`balance_pools`) instead of equal shares."""
    features, store_cfg = copy.deepcopy(features), copy.deepcopy(store_cfg)
    nodes = stage_nodes(features, store_cfg)
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    notes: list[str] = []
    gpu_stages = [n for n, r in nodes.items() if wants_gpu(n, r)]
    sizable = {n for n, r in nodes.items() if _is_auto(r.get("concurrency"))}

    # GPUs
    for name, res in nodes.items():
        if not _is_auto(res.get("num_gpus")):
            continue
        if name not in gpu_stages or gpus < 0.01:
            res["num_gpus"] = 0
            continue
        per_stage = gpus / len(gpu_stages)
        res["num_gpus"] = 1 if per_stage >= 1 else _floor(per_stage)
        if _is_auto(res.get("concurrency")):
            res["concurrency"] = max(1, int(per_stage // 1))
    if gpu_stages and gpus < 0.01:
        notes.append(f"no GPU in the Ray cluster: {', '.join(gpu_stages)}: {CPU_ONLY_NOTE}")
    elif gpu_stages:
        notes.append(f"{gpus:g} GPU(s) shared by {', '.join(gpu_stages)}: "
                     + ", ".join(f"{n} {nodes[n]['num_gpus']:g}x{nodes[n].get('concurrency', 1)}" for n in gpu_stages))

    # CPUs: fixed first, then one per automatic actor, then more actors of CPU-only stages
    for res in nodes.values():
        if _is_auto(res.get("concurrency")) and not _is_auto(res.get("num_cpus")):
            res["concurrency"] = 1
    fixed = sum(float(r["num_cpus"]) * int(r.get("concurrency", 1)) for r in nodes.values()
                if not _is_auto(r.get("num_cpus")))
    auto = [n for n, r in nodes.items() if _is_auto(r.get("num_cpus"))]
    growable = [n for n in auto if _is_auto(nodes[n].get("concurrency")) and not float(nodes[n].get("num_gpus") or 0)]
    for n in auto:
        if _is_auto(nodes[n].get("concurrency")):
            nodes[n]["concurrency"] = 1
    actors = sum(int(nodes[n]["concurrency"]) for n in auto)
    left = cpus - fixed
    if auto:
        if left >= actors:
            for n in auto:
                nodes[n]["num_cpus"] = 1
            spare = int(left - actors)
            order = sorted(growable, key=lambda n: (n != "decode", list(nodes).index(n)))
            for k in range(spare if order else 0):  # round robin, decode first
                nodes[order[k % len(order)]]["concurrency"] += 1
        else:
            share = _floor(max(left, 0.01 * actors) / actors)
            for n in auto:
                nodes[n]["num_cpus"] = share
            notes.append(f"{cpus:g} CPUs for {actors} automatic actors (+{fixed:g} CPUs fixed): {share:g} CPU each")
    for res in nodes.values():  # concurrency left `auto` on a stage with fixed numbers
        if _is_auto(res.get("concurrency")):
            res["concurrency"] = 1
    if costs:
        notes.append(balance_pools(nodes, costs, have, growable=sizable, gpu_stages=set(gpu_stages)))
    return features, store_cfg, notes


# With fewer GPUs than model stages, this many actors per model stage share the GPUs, so that a
# costly stage can hold several slices of the GPU's time (today's equal shares: one each).
SHARED_GPU_ACTORS_PER_STAGE = 2


def _gpu_slots(gpus: float, n_stages: int) -> tuple[int, float]:
    """(GPU actors the model stages may hold in all, GPU fraction of each) for ``gpus`` GPUs."""
    if gpus >= n_stages:
        return int(gpus), 1.0
    slots = SHARED_GPU_ACTORS_PER_STAGE * n_stages
    return slots, _floor(gpus / slots)


def balance_pools(nodes: dict, costs: dict, have: dict, *, growable: set, gpu_stages: set) -> str:
    """Resize, in place, the pools of ``growable`` stages (concurrency `auto`) so that each stage's
    throughput (actors / seconds per video) is as even as the cluster allows; returns a log note.

    Every stage keeps at least one actor. Actors are added one at a time to the stage that would
    finish its share last (the largest cost / actors) while the cluster holds it: one actor per CPU
    in all (never fewer than today's pools), and for model stages that use a GPU, whole GPUs when
    there are at least as many GPUs as model stages, else `_gpu_slots` fractions. The actors of
    stages with a fixed concurrency are left as they are and counted."""
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    mean = sum(costs.values()) / len(costs)
    cost = {n: float(costs.get(n, mean)) for n in nodes}
    grow = [n for n in nodes if n in growable and cost[n] > 0]
    use_gpu = {n for n in grow if n in gpu_stages and float(nodes[n].get("num_gpus") or 0) > 0}
    slots, frac = _gpu_slots(gpus, len(use_gpu)) if use_gpu else (0, 0.0)
    weight = {n: max(1.0, float(r["num_cpus"])) for n, r in nodes.items()}  # CPUs an actor holds, at least one
    budget = max(float(int(cpus)), sum(weight[n] * int(r["concurrency"]) for n, r in nodes.items()))
    count = {n: 1 for n in grow}
    used = sum(weight[n] * (count.get(n) or int(r["concurrency"])) for n, r in nodes.items())
    while grow:
        top = max(grow, key=lambda n: cost[n] / count[n])
        gpu_used = sum(count[n] for n in use_gpu) + (top in use_gpu)
        if used + weight[top] > budget + 1e-9 or (top in use_gpu and gpu_used > slots):
            break
        count[top] += 1
        used += weight[top]
    for n, k in count.items():
        nodes[n]["concurrency"] = k
        if n in use_gpu:
            nodes[n]["num_gpus"] = frac
        if float(nodes[n]["num_cpus"]) * k > cpus and cpus > 0:  # never ask one stage for more than the cluster
            nodes[n]["num_cpus"] = _floor(cpus / k)
    bottleneck = max(nodes, key=lambda n: cost[n] / int(nodes[n]["concurrency"]))
    return ("pools sized by measured throughput (plan.json): " + ", ".join(
        f"{n} {int(nodes[n]['concurrency'])} for {cost[n]:.3g} s/video" for n in nodes)
        + f"; slowest per video: {bottleneck}")


def describe(features: dict, store_cfg: dict) -> str:
    """One line: each stage's pool as actors x (CPUs + GPUs)."""
    parts = []
    for name, res in stage_nodes(features, store_cfg).items():
        gpu = float(res.get("num_gpus") or 0)
        parts.append(f"{name} {res.get('concurrency', 1)}x{float(res.get('num_cpus', 1)):g}" + (f"+{gpu:g}GPU" if gpu else ""))
    return ", ".join(parts)


PLANS = ("auto", "stages", "fused")


def _num(value, default: float) -> float:
    return default if _is_auto(value) else float(value)


def choose_plan(mode: str, features: dict, store_cfg: dict, have: dict) -> tuple[str, str]:
    """(plan, why) for ``mode`` (auto | stages | fused) on a cluster with ``have``; the config is the
    resolved one before `fit_resources` (autos still autos)."""
    mode = str(mode or "auto").lower()
    if mode not in PLANS:
        raise ValueError(f"plan.mode={mode!r}: expected one of {', '.join(PLANS)}")
    if mode != "auto":
        return mode, f"plan.mode={mode}"
    nodes = stage_nodes(copy.deepcopy(features), copy.deepcopy(store_cfg))
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    need = sum(max(1.0, _num(r.get("num_cpus"), 1.0)) * max(1, int(_num(r.get("concurrency"), 1)))
               for r in nodes.values())
    gpu_stages = [n for n, r in nodes.items() if wants_gpu(n, r) or (not _is_auto(r.get("num_gpus"))
                                                                     and float(r.get("num_gpus") or 0) > 0)]
    if gpu_stages and 0 < gpus < len(gpu_stages):
        return "fused", (f"{gpus:g} GPU(s) for {len(gpu_stages)} model stages ({', '.join(gpu_stages)}): each fused "
                         f"actor runs them all on its share")
    if cpus < need:
        return "fused", (f"{len(nodes)} stage pools need {need:g} CPUs at one or more each and the cluster has "
                         f"{cpus:g}: each fused actor runs every stage")
    return "stages", f"{cpus:g} CPUs and {gpus:g} GPUs place every stage pool ({need:g} CPUs at one or more each)"


def fit_fused(plan_cfg: dict, features: dict, have: dict, shards: int) -> dict:
    """The fused actors' resources (num_cpus, num_gpus, concurrency; numbers win over auto) for a
    cluster with ``have`` and a pass of ``shards`` shards (an automatic actor gets at least
    SHARDS_PER_ACTOR of them)."""
    res = {k: plan_cfg.get(k, AUTO) for k in KEYS}
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    if _is_auto(res["num_gpus"]):  # a GPU where some stage would use one
        use_gpu = gpus >= 0.01 and any(wants_gpu(n, r) for n, r in stage_nodes(copy.deepcopy(features), {}).items())
    else:
        use_gpu = float(res["num_gpus"]) > 0
    if _is_auto(res["concurrency"]):
        per_gpu = max(1, int(plan_cfg.get("actors_per_gpu", 2) or 1))
        n = int(gpus * per_gpu) if use_gpu else int(cpus // max(_num(res["num_cpus"], 1.0), 0.01))
        # at least SHARDS_PER_ACTOR shards per actor: an actor's start (its imports and models) costs
        # more than the parallelism it adds to a lone shard
        res["concurrency"] = max(1, min(n, shards // SHARDS_PER_ACTOR))
    n = int(res["concurrency"])
    if _is_auto(res["num_gpus"]):
        res["num_gpus"] = (1 if gpus / n >= 1 else _floor(gpus / n)) if use_gpu else 0
    if _is_auto(res["num_cpus"]):
        # one CPU per actor without a GPU (more actors instead); with one, the CPUs split between them
        res["num_cpus"] = _floor(cpus / n) if cpus < n else (int(cpus // n) if use_gpu else 1)
    res["num_gpus"], res["num_cpus"] = float(res["num_gpus"] or 0), float(res["num_cpus"])
    _warn_stage_gpus_unused(features, res)
    return {**res, **{k: plan_cfg[k] for k in ("max_restarts", "max_task_retries") if plan_cfg.get(k) is not None}}


def stage_gpu_numbers(features: dict) -> dict[str, float]:
    """{stage: num_gpus} of the stages given a GPU share by number (not auto, not 0)."""
    nodes = stage_nodes(copy.deepcopy(features), {})
    return {n: float(r["num_gpus"]) for n, r in nodes.items()
            if not _is_auto(r.get("num_gpus")) and float(r.get("num_gpus") or 0) > 0}


def _warn_stage_gpus_unused(features: dict, fused: dict) -> None:
    """A stage's own num_gpus sizes its pool in the per-stage plan only: say so rather than let a
    number the user set vanish under the fused plan."""
    numbers = stage_gpu_numbers(features)
    if numbers:
        log.warning("the fused plan runs every stage in one actor with plan.fused.num_gpus=%g, so %s "
                    "apply only to the per-stage plan: pass plan.mode=stages to give stages their own GPU "
                    "shares, or plan.fused.num_gpus=<share> to size the fused actors", fused["num_gpus"],
                    ", ".join(f"features.extractors.{n}.resources.num_gpus={g:g}" for n, g in numbers.items()))


def describe_fused(res: dict) -> str:
    gpu = float(res.get("num_gpus") or 0)
    return f"fused {res['concurrency']}x{float(res['num_cpus']):g}" + (f"+{gpu:g}GPU" if gpu else "")


PLAN_FILE = "plan.json"


def cluster_shape(have: dict) -> dict:
    """What identifies a cluster for a measured plan: its CPUs and GPUs (whole numbers)."""
    return {"CPU": int(round(float(have.get("CPU", 0)))), "GPU": int(round(float(have.get("GPU", 0))))}


def measured_costs(plan_json: dict | None, config_hash: str, have: dict) -> tuple[dict | None, str]:
    """(stage costs, why) from a `make plan` result when it was measured for these features
    (``config_hash``) and answers for this cluster's shape; (None, why not) otherwise."""
    if not plan_json:
        return None, f"no {PLAN_FILE} beside the store (make plan measures one): equal shares"
    shape = cluster_shape(have)
    shapes = [c.get("cluster") for c in plan_json.get("clusters", [])]
    if plan_json.get("config_hash") != config_hash:
        return None, (f"{PLAN_FILE} was measured for features {plan_json.get('config_hash')}, this run's are "
                      f"{config_hash}: equal shares")
    if shape not in shapes:
        return None, f"{PLAN_FILE} answers for clusters {shapes}, this one is {shape}: equal shares"
    return {k: float(v) for k, v in plan_json["stage_seconds_per_video"].items()}, f"{PLAN_FILE} matches {shape}"
