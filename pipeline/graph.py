"""The Ray Data streaming graph: decode once -> modality stages -> encoder -> one writer per shard.

Each row of the Ray dataset is one output shard: ``{"shard_id": str, "payload": bytes}``, the
payload being the pickled shard dict of core.schema. A shard therefore flows through every
stage as one unit and is written by exactly one writer call, while different shards stream
through the actor pools concurrently (memory is bounded by the shards in flight, not by the
dataset). Weights load in the actors' constructors, never on the driver.
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from pathlib import Path

import numpy as np

from core.hub import ModelUnavailableError
from core.store import ShardSpec
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.sandbox import Sandbox, resolve
from pipeline.store import write_shard


DEFAULT_DECODER = "pipeline.decode:decode_video"
STREAM_DECODER = "pipeline.decode:decode_stream"
DEFAULT_TIMEOUT_S = 300.0   # per video; features.decode.resources.timeout_s
# Finite retries for every actor pool (Ray Data's default is -1: forever): a lost node or a
# crashed actor is retried this often, then the error stops the run instead of stalling it.
DEFAULT_RETRIES = 3


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


def initial_payload(spec: ShardSpec, entries) -> dict:
    """The payload a shard starts with: manifest fields only."""
    return {
        "shard_id": spec.shard_id, "split": spec.split, "timings": {},
        "videos": [{"video_id": e.video_id, "path": e.path, "start": e.start, "end": e.end,
                    "streams": dict(e.streams), "failed": None,
                    "errors": [], "maps": {}, "images": {}, "features": {}, "model_meta": {}} for e in entries],
    }


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
            payload["decoded"] = payload.get("decoded", 0) + 1  # the report checks: once per video per run
            try:
                video.update(self._call(self.decoder, video["path"], self.cfg, video["start"], video["end"]))
            except DecodeError as exc:
                video["failed"] = {"stage": "decode", "reason": str(exc)}
            except Exception as exc:  # a decoder crash or hang is a per-video failure, not a run failure
                video["failed"] = {"stage": "decode", "reason": _reason(exc)}
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
                video["errors"].append({"stage": "decode", "reason": f"{m} stream: {_reason(exc)}"})

    def __call__(self, batch: dict) -> dict:
        return _out([_timed(self.name, self.run, p) for p in _rows(batch)])


def _timed(name: str, fn, payload: dict) -> dict:
    t0 = time.perf_counter()
    payload = fn(payload)
    payload["timings"][name] = payload["timings"].get(name, 0.0) + time.perf_counter() - t0
    return payload


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
        threads = max(1, int((cfg.get("resources") or {}).get("num_cpus", 1)))
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
        active = [v for v in payload["videos"] if not v["failed"]]
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
                video["errors"].append({"stage": self.name, "reason": _reason(exc),
                                        "trace": traceback.format_exc(limit=3)[-1500:]})
        return payload

    def __call__(self, batch: dict) -> dict:
        if self.unavailable is not None:
            raise self.unavailable
        return _out([_timed(self.name, self.run, p) for p in _rows(batch)])


class ShardWriterStage:
    """The one writer of each shard: writes it, marker last, and emits the marker as JSON."""

    def __init__(self, root: str, config_hash: str, compression: str, raw_maps: bool):
        self.root, self.config_hash = Path(root), config_hash
        self.compression, self.raw_maps = compression, raw_maps

    def __call__(self, batch: dict) -> dict:
        markers = []
        for payload in _rows(batch):
            t0 = time.perf_counter()
            for v in payload["videos"]:
                if not v["failed"] and not v["features"]:
                    reasons = "; ".join(f"{e['stage']}: {e['reason']}" for e in v["errors"]) or "no stage ran"
                    v["failed"] = {"stage": "extract", "reason": f"no modality succeeded ({reasons})"}
            timings = dict(payload["timings"])
            spec = ShardSpec(payload["shard_id"], payload["split"], tuple(v["video_id"] for v in payload["videos"]))
            marker = write_shard(self.root, spec, payload["videos"], config_hash=self.config_hash,
                                 compression=self.compression, store_raw_maps=self.raw_maps, timings=timings)
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
           "max_task_retries": int(res.get("max_task_retries", DEFAULT_RETRIES))}
    if res.get("num_gpus"):
        out["num_gpus"] = float(res["num_gpus"])
    return out


def build_dataset(shards, features: dict, *, root: Path, config_hash: str, store_cfg: dict, decode_resources: dict):
    """The lazy Ray dataset for the shards still to do (nothing runs until it is consumed)."""
    import ray.data

    items = [{"shard_id": spec.shard_id, "payload": _dump(initial_payload(spec, entries))} for spec, entries in shards]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(DecodeStage, fn_constructor_kwargs={"decode_cfg": features["decode"]}, batch_size=1,
                        **_resources(decode_resources))
    for name, ext in features["extractors"].items():
        ds = ds.map_batches(ExtractorStage, fn_constructor_kwargs={"name": name, "cfg": ext}, batch_size=1,
                            **_resources(ext.get("resources")))
    return ds.map_batches(
        ShardWriterStage,
        fn_constructor_kwargs={"root": str(root), "config_hash": config_hash,
                               "compression": store_cfg.get("compression", "auto"),
                               "raw_maps": bool(store_cfg.get("raw_maps", False))},
        batch_size=1, **_resources(store_cfg.get("resources")),
    )
