"""`extract` end to end: manifest -> skip valid shards -> Ray graph -> failures manifest -> report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from core.features import config_hash, hashed_view, resolve_features
from core.hub import ModelUnavailableError
from core.store import collect_markers, shard_is_valid, verify_shard
from core.util import find_error, to_plain
from pipeline.manifest import build_manifest
from pipeline.report import build_report, summary, write_report
from pipeline.store import init_store, remove_stale_temporaries, write_failures

log = logging.getLogger("crema.extract")


class ExtractError(RuntimeError):
    """A run-level problem the user can fix (e.g. model weights unavailable); the message says how."""


def _user_error(exc: BaseException) -> ExtractError | None:
    """Ray wraps an actor's constructor error in layers (ActorDiedError, RayTaskError, ...); a
    ModelUnavailableError inside them becomes the one message the user needs."""
    found = find_error(exc, ModelUnavailableError)
    return ExtractError(str(found)) if found is not None else None


def start_ray(ray_cfg: dict) -> None:
    """Join a cluster when one is named (``ray job submit`` sets RAY_ADDRESS), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    # Local workers inherit the driver's environment; a runtime_env would cost ~30 s of start-up.
    for var, value in (("OMP_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        for attempt in (1, 2):  # a busy machine can miss Ray's start-up deadline once
            try:
                ray.init(num_cpus=ray_cfg.get("num_cpus"), num_gpus=ray_cfg.get("num_gpus"),
                         include_dashboard=False, log_to_driver=True)
                break
            except Exception as exc:
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
                log.warning("local Ray did not start in time (%s); retrying once", exc)
                ray.shutdown()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(ray_cfg.get("progress_bars", False))
    ctx.print_on_execution_start = False
    # A stage's own exception reaches the driver with its type (not wrapped in UserCodeException,
    # whose cause Ray does not carry across processes): _user_error catches it by class.
    ctx.raise_original_map_exception = True


def check_resources(features: dict, store_cfg: dict, have: dict, *, local: bool) -> None:
    """Every stage holds a fixed actor pool; if the pools cannot all be placed, Ray Data would wait forever.

    On a local Ray that is an error with the arithmetic spelled out; on a cluster (which may
    autoscale) it is a warning.
    """
    stages = {"decode": features["decode"].get("resources") or {},
              **{n: e.get("resources") or {} for n, e in features["extractors"].items()},
              "writer": store_cfg.get("resources") or {}}
    need = {"CPU": 0.0, "GPU": 0.0}
    parts = []
    for name, res in stages.items():
        n = int(res.get("concurrency", 1))
        cpu, gpu = float(res.get("num_cpus", 1)) * n, float(res.get("num_gpus") or 0) * n
        need["CPU"] += cpu
        need["GPU"] += gpu
        parts.append(f"{name} {n}x{float(res.get('num_cpus', 1)):g}" + (f"+{float(res['num_gpus']):g}GPU" if gpu else ""))
    short = [k for k in need if need[k] > have.get(k, 0.0) + 1e-9]
    if not short:
        return
    msg = (f"the stages' actor pools need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs but the Ray cluster has "
           f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs ({', '.join(parts)}). Lower some stages' "
           f"resources, e.g. ARGS=\"features.extractors.depth.resources.num_cpus=0.5\", or use more machines.")
    if local:
        raise ExtractError(msg)
    log.warning("%s Waiting for the cluster to scale.", msg)


def _drop_foreign_shards(root: Path, wanted: set[str]) -> list[str]:
    """Shards left from an older video list would otherwise stay visible to readers."""
    dropped = []
    for shard_dir in Path(root).glob("*/*.zarr"):
        rel = f"{shard_dir.parent.name}/{shard_dir.name}"
        if rel not in wanted:
            shutil.rmtree(shard_dir)
            dropped.append(rel)
    return dropped


def _done(shard_dir: Path, chash: str, video_ids, verify: bool) -> bool:
    """A shard to skip: its marker validates and, with store.verify, its data matches the
    marker's checksums (a corrupt shard is logged and written again)."""
    if not shard_is_valid(shard_dir, config_hash=chash, video_ids=video_ids):
        return False
    problems = verify_shard(shard_dir) if verify else []
    if problems:
        log.warning("%s is corrupt (%s): extracting it again", shard_dir, "; ".join(problems[:3]))
    return not problems


def _translated(rows):
    """Iterate the graph's output, turning a user-fixable failure inside Ray into an ExtractError."""
    try:
        yield from rows
    except Exception as exc:
        user = _user_error(exc)
        if user is None:
            raise
        raise user from None


def run_extract(cfg) -> dict:
    """Run (or resume) extraction for ``cfg.dataset`` into ``cfg.out``; returns the report."""
    from core.datasets import load_dataset
    from pipeline.demo import ensure_demo
    from pipeline.graph import build_dataset

    t0 = time.time()
    features = resolve_features(cfg.features)
    chash = config_hash(cfg.features)
    store_cfg = to_plain(cfg.store)
    ensure_demo(cfg.dataset)
    index = load_dataset(cfg.dataset)
    root = Path(cfg.out) / index.name
    shards = build_manifest(index, int(store_cfg["shard_size"]))
    init_store(root, dataset=index.name, config_hash=chash, features=hashed_view(features),
               overwrite=bool(store_cfg.get("overwrite", False)))
    cleaned = remove_stale_temporaries(root)
    dropped = _drop_foreign_shards(root, {spec.relpath() for spec, _ in shards})
    verify = bool(store_cfg.get("verify", False))
    todo = [(s, e) for s, e in shards if not _done(root / s.relpath(), chash, s.video_ids, verify)]
    log.info("%s: %d videos in %d shards; %d shards already valid, %d to do (removed %d leftovers, %d stale shards)",
             index.name, len(index.videos), len(shards), len(shards) - len(todo), len(todo), cleaned, len(dropped))
    stage_seconds: dict[str, float] = {}
    n_decoded = 0
    if todo:
        start_ray(to_plain(cfg.ray))
        import ray

        check_resources(features, store_cfg, ray.cluster_resources(),
                        local=not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
        ds = build_dataset(todo, features, root=root, config_hash=chash, store_cfg=store_cfg,
                           decode_resources=features["decode"].get("resources"))
        n_ok = n_failed = 0
        with tqdm(total=len(todo), unit="shard", desc=f"extract {index.name}", dynamic_ncols=True) as bar:
            for row in _translated(ds.iter_rows()):
                marker = json.loads(row["marker"])
                n_ok, n_failed = n_ok + len(marker["ok"]), n_failed + len(marker["failed"])
                n_decoded += marker["videos_decoded"]
                for stage, sec in marker["timings"].items():
                    stage_seconds[stage] = stage_seconds.get(stage, 0.0) + sec
                bar.set_postfix(videos_ok=n_ok, failed=n_failed)
                bar.update(1)
    markers = collect_markers(root, config_hash=chash)
    failures = write_failures(root, markers.values())
    run = {"shards_written": len(todo), "shards_skipped": len(shards) - len(todo), "wall_seconds": time.time() - t0,
           "videos_decoded": n_decoded,
           "stage_seconds": {k: round(v, 3) for k, v in stage_seconds.items()}, "preset": features.get("preset"),
           "modalities_requested": features["modalities"]}
    report = build_report(dataset=index.name, root=root, config_hash=chash, shards=shards, markers=markers,
                          failures=failures, run=run)
    write_report(root, report)
    print(summary(report, failures), flush=True)
    return report
