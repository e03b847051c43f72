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
"""

from __future__ import annotations

import copy
import logging
import math

log = logging.getLogger("crema.resources")

AUTO = "auto"
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


def fit_resources(features: dict, store_cfg: dict, have: dict) -> tuple[dict, dict, list[str]]:
    """Copies of (resolved features, store config) with every `auto` made a number for a cluster
    with ``have`` (Ray's cluster_resources: CPU, GPU); plus notes for the log."""
    features, store_cfg = copy.deepcopy(features), copy.deepcopy(store_cfg)
    nodes = stage_nodes(features, store_cfg)
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    notes: list[str] = []
    gpu_stages = [n for n, r in nodes.items() if wants_gpu(n, r)]

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
    return features, store_cfg, notes


def describe(features: dict, store_cfg: dict) -> str:
    """One line: each stage's pool as actors x (CPUs + GPUs)."""
    parts = []
    for name, res in stage_nodes(features, store_cfg).items():
        gpu = float(res.get("num_gpus") or 0)
        parts.append(f"{name} {res.get('concurrency', 1)}x{float(res.get('num_cpus', 1)):g}" + (f"+{gpu:g}GPU" if gpu else ""))
    return ", ".join(parts)
