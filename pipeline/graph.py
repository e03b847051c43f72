"""The Ray Data streaming graph: decode once -> modality stages -> encoder -> one writer per shard.

Each row of the Ray dataset is one output shard: ``{"shard_id": str, "payload": bytes}``, the
payload being the pickled shard dict of core.schema. A shard therefore flows through every
stage as one unit and is written by exactly one writer call, while different shards stream
through the actor pools concurrently (memory is bounded by the shards in flight, not by the
dataset). Weights load in the actors' constructors, never on the driver.
"""

from __future__ import annotations

import errno
import json
import pickle
import time
import traceback
from pathlib import Path

import numpy as np

from core.hub import ModelUnavailableError
from core.modalities import MODALITIES
from core.store import ShardSpec
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.sandbox import Sandbox, SandboxError, resolve
from pipeline.store import load_base, write_shard


DEFAULT_DECODER = "pipeline.decode:decode_video"
STREAM_DECODER = "pipeline.decode:decode_stream"
DEFAULT_TIMEOUT_S = 300.0   # per video; features.decode.resources.timeout_s
# Finite retries for every actor pool (Ray Data's default is -1: forever): a lost node or a
# crashed actor is retried this often, then the error stops the run instead of stalling it.
DEFAULT_RETRIES = 3
# Task retries are spent faster: while a lost node is not yet declared dead (Ray's health checks,
# ~15-25 s by default), a task sent to its actors fails at once and is retried with a backoff of
# 0.1 s doubling to 5 s. 12 retries wait ~36 s in all, long enough for the actor to be restarted
# elsewhere; a crashing actor is still bounded by max_restarts.
DEFAULT_TASK_RETRIES = 12


def _dump(payload: dict) -> bytes:
    return pickle.dumps(payload, protocol=5)


def _rows(batch: dict) -> list[dict]:
    return [pickle.loads(b) for b in batch["payload"]]


def _out(payloads: list[dict]) -> dict:
    return {"shard_id": np.array([p["shard_id"] for p in payloads]),
            "payload": np.array([_dump(p) for p in payloads], dtype=object)}


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]


_TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.ENOSPC, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ENOMEM, errno.EBUSY}


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying on the next run by itself (memory, a flaky filesystem or network,
    a lost Ray node or object), as opposed to one the video itself causes (undecodable, a crash
    or hang of the decoder, a bug). Transient entries are redone by the next run automatically."""
    if isinstance(exc, (DecodeError, SandboxError)):
        return False
    if isinstance(exc, (MemoryError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if "out of memory" in str(exc).lower():  # torch.cuda.OutOfMemoryError and friends
        return True
    return type(exc).__module__.startswith("ray.")


def _entry(stage: str, exc: BaseException, **extra) -> dict:
    entry = {"stage": stage, "reason": _reason(exc), **extra}
    if is_transient(exc):
        entry["transient"] = True
    return entry


def initial_payload(spec: ShardSpec, entries, *, carry=(), base: str | None = None) -> dict:
    """The payload a shard starts with: manifest fields only. Videos in ``carry`` are taken over
    from the existing shard ``base`` by the writer (nothing decodes or extracts them)."""
    by_id = {e.video_id: e for e in entries}
    videos = []
    for vid in spec.video_ids:
        e = by_id.get(vid)
        videos.append({"video_id": vid, "path": e.path if e else "", "start": e.start if e else None,
                       "end": e.end if e else None, "streams": dict(e.streams) if e else {}, "failed": None,
                       "carry": vid in carry, "errors": [], "maps": {}, "images": {}, "features": {},
                       "model_meta": {}})
    return {"shard_id": spec.shard_id, "split": spec.split, "timings": {}, "base": base, "videos": videos}


class DecodeStage:
    """Decodes every video of a shard once; the frames and audio travel with the shard."""

    name = "decode"

    def __init__(self, decode_cfg: dict):
        self.cfg = DecodeConfig.from_cfg(decode_cfg)
        # `decoder` (a function path; the default, or a test's fault injector) is part of the
        # features hash when set; isolation and the time limit are runtime knobs (`resources`).
        self.decoder = decode_cfg.get("decoder") or DEFAULT_DECODER
        res = decode_cfg.get("resources") or {}
        timeout = res.get("timeout_s", DEFAULT_TIMEOUT_S)
        self.sandbox = Sandbox(float(timeout) if timeout else None) if res.get("isolate", True) else None

    def _call(self, function: str, *args):
        """A decoder call: in the sandbox child (a crash or a hang costs this video only), or here."""
        if self.sandbox is not None:
            return self.sandbox.call(function, *args)
        return resolve(function)(*args)

    def run(self, payload: dict) -> dict:
        for video in payload["videos"]:
            if video.get("carry"):
                continue
            payload["decoded"] = payload.get("decoded", 0) + 1  # the report checks: once per video per run
            try:
                video.update(self._call(self.decoder, video["path"], self.cfg, video["start"], video["end"]))
            except DecodeError as exc:
                video["failed"] = {"stage": "decode", "reason": str(exc)}
            except Exception as exc:  # a decoder crash or hang is a per-video failure, not a run failure
                video["failed"] = _entry("decode", exc)
            if not video["failed"]:
                self._streams(video)
        return payload

    def _streams(self, video: dict) -> None:
        """The requested sensor streams, at the RGB frames' timestamps, into images[m]. A missing
        or undecodable stream costs that modality of that video only (listed, not fatal)."""
        for m in self.cfg.streams:
            path = (video.get("streams") or {}).get(m)
            try:
                if not path:
                    raise DecodeError(f"the dataset names no {m} video for this clip")
                video["images"][m] = self._call(STREAM_DECODER, path, video["timestamps"], self.cfg.max_side)
            except Exception as exc:
                entry = _entry("decode", exc)
                video["errors"].append({**entry, "reason": f"{m} stream: {entry['reason']}"})

    def __call__(self, batch: dict) -> dict:
        return _out([_timed(self.name, self.run, p) for p in _rows(batch)])


def _timed(name: str, fn, payload: dict) -> dict:
    t0 = time.perf_counter()
    payload = fn(payload)
    payload["timings"][name] = payload["timings"].get(name, 0.0) + time.perf_counter() - t0
    payload.setdefault("nodes", {})[name] = _node()
    return payload


def _node() -> dict | None:
    """The Ray node this process runs on (id + IP, for the marker's `nodes`); None outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


class ExtractorStage:
    """Runs one extractor (built from its config, in the actor) over whole shards.

    The extractor sees the shard at once (so it can batch frames across videos). If it raises,
    the shard is re-run video by video, so one bad video costs only its own modality, recorded
    with the stage and the reason, and the partial outputs of the failing call are removed.
    """

    def __init__(self, name: str, cfg: dict):
        from hydra.utils import get_class
        from omegaconf import OmegaConf

        self.name = name
        cpus = (cfg.get("resources") or {}).get("num_cpus", 1)
        threads = max(1, int(cpus)) if isinstance(cpus, (int, float)) else 1  # `auto` not fitted (outside a run)
        try:
            import torch

            torch.set_num_threads(threads)  # fractional CPUs per actor: do not oversubscribe the node
        except ImportError:
            pass
        # Ray keeps only the message of an error raised in an actor's constructor (ActorDiedError),
        # so a model that cannot be loaded is raised from the first call instead: a task error
        # keeps its type (RayTaskError.cause) and the driver catches it as ModelUnavailableError.
        self.unavailable: ModelUnavailableError | None = None
        try:
            self.extractor = get_class(cfg["_target_"])(OmegaConf.create(cfg))
        except ModelUnavailableError as err:
            self.unavailable = err

    def _clear(self, video: dict, before: dict) -> None:
        for field in ("maps", "images", "features", "model_meta"):
            for key in set(video[field]) - set(before[field]):
                del video[field][key]

    def run(self, payload: dict) -> dict:
        active = [v for v in payload["videos"] if not v["failed"] and not v.get("carry")]
        if not active:
            return payload
        snapshot = [{f: dict(v[f]) for f in ("maps", "images", "features", "model_meta")} for v in active]
        try:
            return self.extractor(payload)
        except Exception:
            pass
        for video, before in zip(active, snapshot):
            self._clear(video, before)
            try:
                self.extractor({**payload, "videos": [video]})
            except Exception as exc:
                self._clear(video, before)
                video["errors"].append(_entry(self.name, exc, trace=traceback.format_exc(limit=3)[-1500:]))
        return payload

    def __call__(self, batch: dict) -> dict:
        if self.unavailable is not None:
            raise self.unavailable
        return _out([_timed(self.name, self.run, p) for p in _rows(batch)])


class ShardWriterStage:
    """The one writer of each shard: writes it, marker last, and emits the marker as JSON.

    ``hashes``: the config hash of each modality this pass computes; ``pass_keys`` /
    ``pass_stages``: the store keys and stages it computes. A shard that already exists (its
    payload names a ``base``) keeps what this pass does not compute (see pipeline.store.load_base).
    """

    def __init__(self, root: str, hashes: dict, compression: str, raw_maps: bool, pass_keys=(), pass_stages=()):
        self.root, self.hashes = Path(root), dict(hashes)
        self.compression, self.raw_maps = compression, raw_maps
        self.pass_keys, self.pass_stages = set(pass_keys), set(pass_stages)

    def __call__(self, batch: dict) -> dict:
        markers = []
        for payload in _rows(batch):
            t0 = time.perf_counter()
            hashes = dict(self.hashes)
            if payload.get("base"):
                base = load_base(Path(payload["base"]), payload["videos"], pass_keys=self.pass_keys,
                                 pass_stages=self.pass_stages)
                hashes = {**base, **hashes}
            for v in payload["videos"]:
                if not v["failed"] and not v["features"]:
                    reasons = "; ".join(f"{e['stage']}: {e['reason']}" for e in v["errors"]) or "no stage ran"
                    v["failed"] = {"stage": "extract", "reason": f"no modality succeeded ({reasons})"}
                    if any(e.get("transient") for e in v["errors"]):
                        v["failed"]["transient"] = True
            timings = dict(payload["timings"])
            spec = ShardSpec(payload["shard_id"], payload["split"], tuple(v["video_id"] for v in payload["videos"]))
            nodes = {**payload.get("nodes", {}), "write": _node()}
            marker = write_shard(self.root, spec, payload["videos"], hashes=hashes,
                                 compression=self.compression, store_raw_maps=self.raw_maps, timings=timings,
                                 nodes=nodes)
            marker["timings"]["write"] = time.perf_counter() - t0
            marker["videos_decoded"] = payload.get("decoded", 0)
            markers.append(json.dumps(marker))
        return {"marker": np.array(markers, dtype=object)}


def _resources(cfg: dict | None) -> dict:
    """map_batches arguments from a stage's `resources` node (an actor pool of fixed size)."""
    from ray.data import ActorPoolStrategy

    res = dict(cfg or {})
    out = {"num_cpus": float(res.get("num_cpus", 1)), "compute": ActorPoolStrategy(size=int(res.get("concurrency", 1))),
           "max_restarts": int(res.get("max_restarts", DEFAULT_RETRIES)),
           "max_task_retries": int(res.get("max_task_retries", DEFAULT_TASK_RETRIES))}
    if res.get("num_gpus"):
        out["num_gpus"] = float(res["num_gpus"])
    return out


def build_dataset(jobs, features: dict, *, root: Path, hashes: dict, store_cfg: dict, decode_resources: dict):
    """The lazy Ray dataset for one pass (nothing runs until it is consumed).

    ``jobs``: (spec, entries, base shard dir or None, ids carried whole from the base);
    ``features``: the resolved config of the modalities this pass computes; ``hashes``: theirs.
    """
    import ray.data

    items = [{"shard_id": spec.shard_id,
              "payload": _dump(initial_payload(spec, entries, carry=carry, base=str(base) if base else None))}
             for spec, entries, base, carry in jobs]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(DecodeStage, fn_constructor_kwargs={"decode_cfg": features["decode"]}, batch_size=1,
                        **_resources(decode_resources))
    for name, ext in features["extractors"].items():
        ds = ds.map_batches(ExtractorStage, fn_constructor_kwargs={"name": name, "cfg": ext}, batch_size=1,
                            **_resources(ext.get("resources")))
    pass_keys = [k for m in features["modalities"] for k in MODALITIES[m].store_keys]
    return ds.map_batches(
        ShardWriterStage,
        fn_constructor_kwargs={"root": str(root), "hashes": hashes,
                               "compression": store_cfg.get("compression", "auto"),
                               "raw_maps": bool(store_cfg.get("raw_maps", False)),
                               "pass_keys": pass_keys, "pass_stages": ["decode", "extract", *features["extractors"]]},
        batch_size=1, **_resources(store_cfg.get("resources")),
    )
