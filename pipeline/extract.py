"""`extract` end to end: manifest -> skip valid shards -> Ray graph -> failures manifest -> report."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.features import combined_hash, modality_hashes, modality_views, resolve_features
from core.hub import ModelUnavailableError
from core.provenance import sources_changed
from core.store import StoreError, collect_markers, corrupt_arrays, read_marker, shard_is_valid
from core.util import find_error, to_plain
from pipeline.errors import ExtractError, quiet_known_errors, storage_error  # noqa: F401 (ExtractError: re-exported)
from pipeline.lease import StoreBusyError, StoreLease
from pipeline.manifest import plan_shards
from pipeline.report import build_report, summary, write_report
from pipeline.resources import (CPU_ONLY_NOTE, PLAN_FILE, choose_plan, describe, describe_fused, fit_fused,
                                 fit_resources, measured_costs, stage_nodes, wants_gpu)
from pipeline.store import init_store, recover_replaced, remove_stale_temporaries, write_failures

log = logging.getLogger("crema.extract")
# Reruns of a pass's unfinished shards after an actor died (memory, a lost node, a crash): bounded.
PASS_RETRIES = 3


def _user_error(exc: BaseException) -> Exception | None:
    """Ray wraps an actor's error in layers (ActorDiedError, RayTaskError, ...); a
    ModelUnavailableError inside them becomes the one message the user needs, and a writer's
    LeaseLostError (the run lost the store) comes out as itself."""
    found = find_error(exc, ModelUnavailableError)
    if found is not None:
        return ExtractError(str(found))
    return find_error(exc, StoreBusyError)


_STARTED: list[bool] = []  # [True] once start_ray has started a local Ray (stop_ray stops only that one)


def start_ray(ray_cfg: dict) -> None:
    """Join a cluster when one is named (``ray job submit`` sets RAY_ADDRESS), else start a local one."""
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if not address and "ray" not in sys.modules:
        # Ray 2.60 turns token authentication on for a new local instance and warns that it did;
        # saying so (the same secure choice) keeps a healthy run free of Ray's warnings. Ray reads
        # the variable when it is imported, hence before that.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    # Local workers inherit the driver's environment; a runtime_env would cost ~30 s of start-up.
    for var, value in (("OMP_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        for attempt in (1, 2):  # a busy machine can miss Ray's start-up deadline once
            try:
                # address="local": a new instance even where a `ray start` on this machine left its
                # address in /tmp/ray (ray.init() would attach to that cluster instead)
                ray.init(address="local", num_cpus=ray_cfg.get("num_cpus"), num_gpus=ray_cfg.get("num_gpus"),
                         include_dashboard=False, log_to_driver=True)
                _STARTED[:] = [True]
                break
            except Exception as exc:
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
                log.warning("local Ray did not start in time (%s); retrying once", exc)
                ray.shutdown()
    quiet_known_errors()


def stop_ray() -> None:
    """Stop the local Ray that start_ray started (a joined cluster, or a Ray the caller started, is
    left alone). Called by the CLI when its work is done: Ray's own exit hook would do the same
    but first sleeps 0.5 s for late log lines, which a finished run has no more of."""
    if _STARTED:
        import ray

        ray.shutdown()
        _STARTED.clear()


def check_resources(features: dict, store_cfg: dict, have: dict, *, local: bool) -> None:
    """Every stage holds a fixed actor pool; if the pools cannot all be placed, Ray Data would wait forever.

    On a local Ray that is an error with the arithmetic spelled out; on a cluster (which may
    autoscale) it is a warning.
    """
    need = {"CPU": 0.0, "GPU": 0.0}
    for res in stage_nodes(features, store_cfg).values():
        n = int(res.get("concurrency", 1))
        need["CPU"] += float(res.get("num_cpus", 1)) * n
        need["GPU"] += float(res.get("num_gpus") or 0) * n
    _place(need, have, "the stages' actor pools", f" ({describe(features, store_cfg)}). Lower some stages' resources, "
           f"e.g. ARGS=\"features.extractors.depth.resources.num_cpus=0.5\", or use more machines.", local=local)


def check_fused(fused: dict, have: dict, *, local: bool) -> None:
    """The fused plan's one pool must fit too (numbers given by hand may not)."""
    n = int(fused["concurrency"])
    need = {"CPU": float(fused["num_cpus"]) * n, "GPU": float(fused["num_gpus"]) * n}
    _place(need, have, f"the fused plan's {n} actors", ". Lower plan.fused.num_cpus/num_gpus/concurrency (or leave "
           "them auto), or use more machines.", local=local)


def _place(need: dict, have: dict, what: str, advice: str, *, local: bool) -> None:
    """Refuse (a local Ray) or warn about (a cluster, which may autoscale) actors that do not fit."""
    if all(need[k] <= have.get(k, 0.0) + 1e-9 for k in need):
        return
    msg = (f"{what} need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs but the Ray cluster has "
           f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs{advice}")
    if local:
        raise ExtractError(msg)
    log.warning("%s Waiting for the cluster to scale.", msg)


@dataclass
class Work:
    """What a run does to the store: passes of (modalities, jobs), and what it must leave."""

    full: list = field(default_factory=list)       # (spec, entries, base, carry): every requested modality
    add: dict = field(default_factory=dict)        # tuple(missing modalities) -> jobs adding them
    done: int = 0
    waiting: list = field(default_factory=list)    # shards that need videos this dataset does not list
    reasons: Counter = field(default_factory=Counter)
    changed: list = field(default_factory=list)    # video ids whose source changed since they were stored


def _retry_ids(marker: dict, retry_failed: bool) -> set[str]:
    """Videos of a valid shard to extract again: transient failures always, every failure and
    lost modality with store.retry_failed."""
    rows = [*marker.get("failed", []), *marker.get("errors", [])]
    return {r["video_id"] for r in rows if retry_failed or r.get("transient")}


def _changed_sources(marker: dict, entries) -> set[str]:
    """Videos of a valid shard whose source file is not the one their features were made from
    (another file at the same relative path, an edited file): they are extracted again."""
    recorded = marker.get("sources") or {}
    return {e.video_id for e in entries
            if sources_changed(recorded.get(e.video_id), e.path, dict(e.streams))}


def plan_work(root: Path, shards, registry: dict, requested: list[str], *, retry_failed: bool, verify: bool) -> Work:
    """Which shards this run writes, and how: a new or broken shard in full; a valid shard
    lacking a requested modality gets just that one added; failed videos are redone in place."""
    work = Work()
    for spec, entries in shards:
        shard_dir = root / spec.relpath()
        listed = {e.video_id for e in entries}
        complete = len(listed) == len(spec.video_ids)
        marker = read_marker(shard_dir)
        valid = marker is not None and shard_is_valid(shard_dir, hashes=registry, video_ids=spec.video_ids)
        if valid and verify:
            problems = corrupt_arrays(shard_dir)
            if problems:  # redone whole; the writer carries over every array that still verifies
                log.warning("%s is corrupt (%s): extracting it again, keeping its intact modalities", shard_dir,
                            "; ".join(f"{k}: {p}" for k, p in list(problems.items())[:3]))
                if complete:
                    work.full.append((spec, entries, shard_dir, set()))
                    work.reasons["repair"] += 1
                else:
                    work.waiting.append(spec)
                continue
        if not valid:
            if complete:
                work.full.append((spec, entries, None, set()))
                work.reasons["new or invalid"] += 1
            else:
                work.waiting.append(spec)
            continue
        missing = tuple(m for m in requested if m not in marker["hashes"])
        changed = _changed_sources(marker, entries)
        work.changed += sorted(changed)
        retry = (_retry_ids(marker, retry_failed) | changed) & listed
        ok = set(marker["ok"])
        if (not missing or not ok) and not retry:  # nothing to add to a shard whose videos all failed
            work.done += 1
        elif not missing:  # redo those videos with every requested modality; the rest is carried over
            work.full.append((spec, entries, shard_dir, set(spec.video_ids) - retry))
            work.reasons["retry"] += 1
        elif not retry and ok <= listed:  # add the missing modalities to every video the shard holds
            work.add.setdefault(missing, []).append((spec, entries, shard_dir, set(spec.video_ids) - ok))
            work.reasons["add " + ",".join(missing)] += 1
        elif complete:  # both: the whole shard again, keeping modalities this run does not ask for
            work.full.append((spec, entries, shard_dir, set()))
            work.reasons["retry + add"] += 1
        else:
            work.waiting.append(spec)
    return work


def hop_bytes(hops: list[dict]) -> dict:
    """Array bytes each stage handed on, per shard written by this run: mean and max over shards."""
    stages = list(dict.fromkeys(k for h in hops for k in h))
    return {"mean": {k: int(sum(h.get(k, 0) for h in hops) / len(hops)) for k in stages},
            "max": {k: max(h.get(k, 0) for h in hops) for k in stages}} if hops else {}


def _measured(root: Path, hashes: dict, have: dict, plan_cfg: dict) -> dict | None:
    """Stage costs of the plan.json beside the store when `plan.measured` and it fits this run (logged either way)."""
    if not plan_cfg.get("measured", True):
        return None
    path = root / PLAN_FILE
    try:
        found = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): equal shares", path, exc)
        return None
    costs, why = measured_costs(found, combined_hash(hashes), have)
    log.info("stage pools: %s", why)
    return costs


def _translated(rows):
    """Iterate the graph's output, turning a user-fixable failure inside Ray into an ExtractError."""
    try:
        yield from rows
    except Exception as exc:
        user = _user_error(exc)
        if user is None:
            raise
        raise user from None


def _run_pass(label: str, jobs, features: dict, hashes: dict, *, root: Path, store_cfg: dict, cfg, lease,
              totals: dict) -> None:
    """One pass of the graph (pipeline.graph.build_dataset) over ``jobs`` computing ``features``
    (resolved) into the store."""
    from pipeline.graph import DEFAULT_RETRIES, LOCAL_RETRIES, build_dataset, configure_data

    t_ray = time.time()
    start_ray(to_plain(cfg.ray))
    totals["phases"].setdefault("ray_init", time.time() - t_ray)
    import ray

    have = ray.cluster_resources()
    plan_cfg = to_plain(cfg.get("plan")) or {}
    plan, why = choose_plan(plan_cfg.get("mode", "auto"), features, store_cfg, have)
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    fused = None
    if plan == "fused":
        fused = fit_fused(plan_cfg.get("fused") or {}, features, have, shards=len(jobs))
        log.info("plan: fused (%s): %s", why, describe_fused(fused))
        if not fused["num_gpus"] and any(wants_gpu(n, r) for n, r in stage_nodes(features, store_cfg).items()):
            log.warning("no GPU in the Ray cluster: %s", CPU_ONLY_NOTE)
        check_fused(fused, have, local=local)
    else:
        costs = _measured(root, hashes, have, plan_cfg)
        features, store_cfg, notes = fit_resources(features, store_cfg, have, costs=costs)
        for note in notes:
            (log.warning if note.startswith("no GPU") else log.info)("%s", note)
        log.info("plan: stages (%s): %s", why, describe(features, store_cfg))
        check_resources(features, store_cfg, have, local=local)
        configure_data(bool(cfg.ray.get("progress_bars", False)))
    totals["plan"] = plan
    restarts = LOCAL_RETRIES if local else DEFAULT_RETRIES
    left, t_pass = list(jobs), time.time()
    with tqdm(total=len(jobs), unit="shard", desc=label, dynamic_ncols=True) as bar:
        for attempt in range(PASS_RETRIES + 1):
            done: set[str] = set()
            try:
                # a generation of the lease per graph: stragglers of an earlier one (or run) cannot swap shards in
                ds = build_dataset(left, features, root=root, hashes=hashes, store_cfg=store_cfg,
                                   decode_resources=features["decode"].get("resources"), plan=plan, fused=fused,
                                   token=lease.new_generation(), restarts=restarts)
                _consume(ds, lease, totals, bar, done, t_pass)
                break
            except Exception as exc:
                died = _actor_death(exc)
                if died is None or attempt == PASS_RETRIES:
                    raise
                left = [job for job in left if job[0].shard_id not in done]
                log.warning("a Ray actor died (%s): running the %d unfinished shards again (%d of %d retries)",
                            died, len(left), attempt + 1, PASS_RETRIES)
    totals["phases"]["passes"] = totals["phases"].get("passes", 0.0) + time.time() - t_pass
    totals["last_shard_t"] = time.time()


def _actor_death(exc: BaseException) -> str | None:
    """Why an actor of the graph died (killed for memory, a lost node, a crash), when that is what
    stopped it; None for any other error. Ray restarts no actor on a local Ray (LOCAL_RETRIES) and
    only a few times on a cluster, so the driver reruns the unfinished shards instead."""
    from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    found = find_error(exc, (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError))
    return None if found is None else " ".join(str(found).split())[:300]


def _consume(ds, lease, totals: dict, bar, done: set, t_pass: float) -> None:
    """Read the graph's markers as shards finish: count them into ``totals``, their ids into ``done``."""
    for row in _translated(ds.iter_rows()):
        lease.check()
        marker = json.loads(row["marker"])
        done.add(marker["shard_id"])
        totals["ok"] += len(marker["ok"])
        totals["failed"] += len(marker["failed"])
        totals["decoded"] += marker["videos_decoded"]
        totals["hops"].append(marker.get("hops") or {})
        totals.setdefault("first_shard_s", time.time() - totals["t0"])
        totals["phases"].setdefault("to_first_shard", time.time() - t_pass)
        totals["startup"] += marker.get("startup") or []
        for stage, sec in marker["timings"].items():
            totals["stages"][stage] = totals["stages"].get(stage, 0.0) + sec
        bar.set_postfix(videos_ok=totals["ok"], failed=totals["failed"])
        bar.update(1)


@dataclass
class RunState:
    """What a run has done so far: enough for a report even when the storage stops it half way."""

    t0: float
    requested: list
    process_start: float | None = None   # when this process started (its age at t0 is the CLI's start-up)
    preset: str | None = None
    registry: dict | None = None
    shards: list | None = None
    added: list = field(default_factory=list)
    work: Work = field(default_factory=Work)
    n_todo: int = 0
    totals: dict = field(default_factory=dict)

    def run_record(self) -> dict:
        totals, work = self.totals, self.work
        return {"shards_written": self.n_todo, "shards_skipped": work.done, "shards_new": len(self.added),
                "shards_waiting": len(work.waiting), "work": dict(work.reasons), "wall_seconds": time.time() - self.t0,
                "videos_decoded": totals.get("decoded", 0),
                "stage_seconds": {k: round(v, 3) for k, v in totals.get("stages", {}).items()},
                "preset": self.preset, "plan": totals.get("plan"), "first_shard_seconds": totals.get("first_shard_s"),
                "bytes_per_hop": hop_bytes(totals.get("hops", [])), "modalities_requested": self.requested,
                "sources_changed": work.changed, "phases_s": self.phases(), "actor_startup": totals.get("startup", [])}

    def phases(self) -> dict:
        """Where the driver's wall went (seconds): before run_extract (interpreter, imports,
        config), preparing (demo, manifest, store, plan), Ray's start, each pass's start to its
        first shard, then the rest of the passes, and what followed the last shard so far."""
        ph = dict(self.totals.get("phases", {}))
        out = {"process_to_run": self.t0 - self.process_start} if self.process_start else {}
        if "prepare" in ph:
            out["prepare"] = ph["prepare"]
        for key in ("ray_init", "to_first_shard"):
            if key in ph:
                out[key] = ph[key]
        if "passes" in ph:
            out["after_first_shard"] = ph["passes"] - ph.get("to_first_shard", 0.0)
        if "last_shard_t" in self.totals:
            out["after_last_shard"] = time.time() - self.totals["last_shard_t"]
        return {k: round(v, 3) for k, v in out.items()}


def _process_start() -> float | None:
    """When this process started (the report's phases count the CLI's own start-up from it)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # a platform without it: the phase is left out
        return None


def run_extract(cfg, index=None) -> dict:
    """Run (or resume, extend, repair) extraction for ``cfg.dataset`` (or the videos of ``index``,
    `make plan`'s sample) into ``cfg.out``; returns the report.

    Raises StorageError (pipeline.errors) when the store's filesystem refuses a write, after
    printing what the store holds and removing this run's temporaries.
    """
    from core.datasets import load_dataset
    from pipeline.demo import ensure_demo

    state = RunState(t0=time.time(), requested=[], process_start=_process_start())
    features = resolve_features(cfg.features)
    state.requested, state.preset = list(features["modalities"]), features.get("preset")
    if index is None:
        ensure_demo(cfg.dataset)
        index = load_dataset(cfg.dataset)
    root = Path(cfg.out) / index.name
    store_cfg = to_plain(cfg.store)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with StoreLease(root, stale_s=float(store_cfg.get("lease_s", 120))) as lease:
            try:
                report, failures = _extract(cfg, index, root, lease, features, state)
            except BaseException as exc:
                err = storage_error(exc, root)
                if err is None:
                    raise
                _stopped_by_storage(root, index.name, lease, state)
                raise err from None
    except OSError as exc:  # creating OUT or the lease file
        err = storage_error(exc, root)
        if err is None:
            raise
        print(f"== extract {index.name}: stopped before taking the store's lease; the store at {root} is unchanged",
              flush=True)
        raise err from None
    print(summary(report, failures), flush=True)
    return report


def _extract(cfg, index, root: Path, lease: StoreLease, features: dict, state: RunState) -> tuple[dict, list]:
    """The run, under the store's lease: plan, extract each pass, then failures and report."""
    hashes = modality_hashes(cfg.features)
    store_cfg = to_plain(cfg.store)
    state.registry = init_store(root, dataset=index.name, hashes=hashes, features=modality_views(cfg.features),
                                overwrite=bool(store_cfg.get("overwrite", False)))
    cleaned = remove_stale_temporaries(root)
    restored = recover_replaced(root)
    state.shards, _foreign, state.added = plan_shards(root, index, int(store_cfg["shard_size"]), fence=lease.fenced)
    work = state.work = plan_work(root, state.shards, state.registry, state.requested,
                                  retry_failed=bool(store_cfg.get("retry_failed", False)),
                                  verify=bool(store_cfg.get("verify", False)))
    state.n_todo = len(work.full) + sum(len(j) for j in work.add.values())
    log.info("%s: %d videos in %d shards (%d new); %d valid, %d to write (%s); %d waiting for videos this "
             "dataset does not list (removed %d leftovers, restored %d shards)", index.name, len(index.videos),
             len(state.shards), len(state.added), work.done, state.n_todo, dict(work.reasons) or "nothing",
             len(work.waiting), cleaned, restored)
    if work.changed:
        log.warning("%d videos changed since they were extracted (e.g. %s): extracting them again",
                    len(work.changed), ", ".join(work.changed[:3]))
    if work.waiting:
        log.warning("%d shards also hold videos this dataset does not list and are not complete (e.g. %s); "
                    "a run over the dataset that lists them finishes them", len(work.waiting),
                    work.waiting[0].relpath())
    totals = state.totals = {"ok": 0, "failed": 0, "decoded": 0, "stages": {}, "hops": [], "t0": state.t0,
                             "startup": [], "phases": {"prepare": time.time() - state.t0}}
    if work.full:
        _run_pass(f"extract {index.name}", work.full, features, hashes, root=root, store_cfg=store_cfg,
                  cfg=cfg, lease=lease, totals=totals)
    for missing, jobs in work.add.items():
        sub = resolve_features({**to_plain(cfg.features), "modalities": list(missing)})
        _run_pass(f"add {','.join(missing)} to {index.name}", jobs, sub, {m: hashes[m] for m in missing},
                  root=root, store_cfg=store_cfg, cfg=cfg, lease=lease, totals=totals)
    markers = collect_markers(root, hashes=state.registry)
    with lease.fenced():  # a run that lost the store (stalled, then taken over) writes nothing more
        failures = write_failures(root, markers.values())
        report = build_report(dataset=index.name, root=root, config_hash=combined_hash(state.registry),
                              shards=state.shards, markers=markers, failures=failures, run=state.run_record())
        write_report(root, report)
    return report, failures


def _stopped_by_storage(root: Path, dataset: str, lease: StoreLease, state: RunState) -> None:
    """After the storage refused a write: fence off this run's writers, remove the temporaries,
    and say what the store holds (report.json too, when the storage still takes it)."""
    try:
        lease.new_generation()  # Ray actors of the failed pass still writing can no longer swap a shard in
    except (OSError, StoreError) as exc:
        log.warning("could not renew the lease generation after the storage error: %s", exc)
    removed = remove_stale_temporaries(root)
    log.info("removed %d temporaries of the interrupted run", removed)
    if state.shards is None or state.registry is None:
        print(f"== extract {dataset}: stopped before any shard was planned; the store at {root} is unchanged",
              flush=True)
        return
    markers = collect_markers(root, hashes=state.registry)
    report = build_report(dataset=dataset, root=root, config_hash=combined_hash(state.registry), shards=state.shards,
                          markers=markers, failures=[], run={**state.run_record(), "stopped": "storage error"})
    try:
        with lease.fenced():
            write_report(root, report)
    except OSError:
        report["run"]["report_json"] = "not written (the storage refused it)"
    print(summary(report, []), flush=True)
