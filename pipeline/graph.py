"""The Ray Data streaming graph: decode once -> modality stages -> encoder -> one writer per shard.

Each row of the Ray dataset is one output shard: ``{"shard_id": str, "payload": dict}``, the
shard dict of core.schema (Ray Data's Python-object column; pickled once per hop). A shard therefore flows through every
stage as one unit and is written by exactly one writer call, while different shards stream
through the actors concurrently (memory is bounded by the shards in flight, not by the
dataset). Weights load in the actors' constructors, never on the driver.

Two plans map the same stages onto actors (pipeline.resources.choose_plan picks one):

- ``stages``: one actor pool per stage (decode, each extractor, the writer); a shard hops from
  pool to pool. For clusters, where each stage gets its own CPUs or GPUs.
- ``fused``: N actors, each running the whole chain for a shard in one process (no hops, one
  copy of each model per actor). For small machines and a single shared GPU, where per-stage
  pools would only share the same cores.

Both write the same store bytes. The payload shrinks as it goes in either plan: after each
stage, the fields no later stage reads leave it (``drop_plan``), and each stage records the
payload's array bytes it hands on (the marker's ``hops``).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import time
import traceback
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from core.hub import ModelUnavailableError
from core.modalities import MODALITIES
from core.store import ShardSpec
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.sandbox import Sandbox, SandboxError, resolve
from pipeline.errors import WriteRefused, is_storage
from pipeline.lease import check_lease, fenced
from pipeline.store import load_base, shard_tmp, write_shard


DEFAULT_DECODER = "pipeline.decode:decode_video"
STREAM_DECODER = "pipeline.decode:decode_stream"
DEFAULT_TIMEOUT_S = 300.0   # per video; features.decode.resources.timeout_s
# Finite retries for every actor pool (Ray Data's default is -1: forever): a lost node or a
# crashed actor is retried this often, then the error stops the run instead of stalling it.
# On a local Ray (one node, nothing to fail over to) the default is LOCAL_RETRIES: Ray Data hands
# every actor its constructor arguments as object-store references, and Ray warns (an ERROR line
# of core_worker.cc, ray-project/ray#53727) about any such actor that may restart.
DEFAULT_RETRIES = 3
LOCAL_RETRIES = 0
# Task retries are spent faster: while a lost node is not yet declared dead (Ray's health checks,
# ~15-25 s by default), a task sent to its actors fails at once and is retried with a backoff of
# 0.1 s doubling to 5 s. 12 retries wait ~36 s in all, long enough for the actor to be restarted
# elsewhere; a crashing actor is still bounded by max_restarts.
DEFAULT_TASK_RETRIES = 12


# What each extractor class reads from a video dict besides its own outputs ("maps.*": every map).
# A class not listed is assumed to read everything, so nothing is dropped before it runs.
READS = {
    "extractors.depth.DepthExtractor": ("frames",),
    "extractors.flow.FlowExtractor": ("frames", "next_frames"),
    "extractors.normal.NormalExtractor": ("frames", "maps.depth"),
    "extractors.encoder.EncoderExtractor": ("frames", "images.*"),
    "extractors.pointcloud.PointCloudExtractor": ("maps.depth",),
    "extractors.audio.AudioExtractor": ("audio",),
    "extractors.beats.BeatsExtractor": ("audio",),
}
_ALL = ("*",)
# Heavy fields that may leave a payload: top-level arrays, and the entries of maps/images.
_TOP = ("frames", "next_frames", "audio")
_NESTED = ("maps", "images")


def _needed(field: str, reads) -> bool:
    return any(r == "*" or r == field or (r.endswith(".*") and field.startswith(r[:-1])) for r in reads)


def drop_plan(extractors: dict, *, raw_maps: bool) -> dict[str, tuple]:
    """{stage: the reads of every stage after it (the writer included)}; after a stage, fields
    none of those read leave the payload. The writer reads the maps only when it stores them."""
    names = ["decode", *extractors]
    reads = {n: READS.get(extractors[n].get("_target_"), _ALL) for n in extractors}
    later_of, later = {}, ("maps.*",) if raw_maps else ()
    for name in reversed(names):
        later_of[name] = later
        later = (*later, *reads.get(name, ()))
    return later_of


def shrink(payload: dict, later_reads) -> None:
    """Drop from every video the heavy fields no later stage reads."""
    for video in payload["videos"]:
        for key in _TOP:
            if key in video and not _needed(key, later_reads):
                del video[key]
        for group in _NESTED:
            for key in list(video.get(group) or {}):
                if not _needed(f"{group}.{key}", later_reads):
                    del video[group][key]


def payload_nbytes(payload: dict) -> int:
    """The array bytes a payload carries (what a hop to the next stage moves)."""
    def size(x) -> int:
        if isinstance(x, np.ndarray):
            return x.nbytes
        if isinstance(x, dict):
            return sum(size(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(size(v) for v in x)
        return 0
    return sum(size(v) for v in payload["videos"])


def _dump(payload: dict) -> bytes:
    return pickle.dumps(payload, protocol=5)


def _rows(batch: dict) -> list[dict]:
    """The payload dicts of a batch: the first stage gets them pickled (manifest fields only:
    Arrow would turn a dict into a struct), every later stage as the objects the one before
    returned."""
    return [pickle.loads(b) if isinstance(b, (bytes, bytearray)) else b for b in batch["payload"]]


def _out(payloads: list[dict]) -> dict:
    """A stage's payloads go on as Python objects: Ray Data pickles each once (its Python-object
    column) for the hop, with no second pickle of ours inside."""
    column = np.empty(len(payloads), dtype=object)
    for i, p in enumerate(payloads):
        column[i] = p
    return {"shard_id": np.array([p["shard_id"] for p in payloads]), "payload": column}


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


class NonFiniteOutput(ValueError):
    """An extractor returned NaN or inf: a failure of its stage for that video, never stored."""


_OUTPUT_FIELDS = ("maps", "images", "features", "model_meta")


def check_finite(stage: str, video: dict, before: dict) -> None:
    """Raise NonFiniteOutput naming the first new map or feature of `video` holding NaN or inf.

    Checked on the raw outputs, before anything draws them: a depth map of NaNs would otherwise
    become a blank image and wrong normals and point clouds.
    """
    for field in ("maps", "features"):
        for key in sorted(set(video[field]) - set(before[field])):
            values = np.asarray(video[field][key])
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                raise NonFiniteOutput(f"{field}.{key} of video {video['video_id']} holds {bad} non-finite values "
                                      f"(NaN/inf) of {values.size}: an overflow of {stage}'s compute dtype? "
                                      f"run it in float32 (features.extractors.{stage}.dtype=float32)")


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

    def __init__(self, decode_cfg: dict, later_reads=_ALL, measure: bool = True):
        self.startup = StartupClock(self.name) if measure else None  # the fused actor measures itself
        self.later_reads = tuple(later_reads)
        self.cfg = DecodeConfig.from_cfg(decode_cfg)
        # `decoder` (a function path; the default, or a test's fault injector) is part of the
        # features hash when set; isolation and the time limit are runtime knobs (`resources`).
        self.decoder = decode_cfg.get("decoder") or DEFAULT_DECODER
        res = decode_cfg.get("resources") or {}
        timeout = res.get("timeout_s", DEFAULT_TIMEOUT_S)
        self.sandbox = None
        if res.get("isolate", True):
            # started now, importing the decoder while this actor builds its models, so the
            # first video does not wait for a cold interpreter
            preload = (self.decoder, *(["av:open"] if self.cfg.decoders[0] == "pyav" else []))
            self.sandbox = Sandbox(float(timeout) if timeout else None, preload=preload)
            self.sandbox.start()
        if self.startup is not None:
            self.startup.done()

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
                video["size"] = list(np.asarray(video["frames"]).shape[1:3])
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
                video["images"][m] = self._call(STREAM_DECODER, path, video["timestamps"], self.cfg.max_side, self.cfg)
            except Exception as exc:
                entry = _entry("decode", exc)
                video["errors"].append({**entry, "reason": f"{m} stream: {entry['reason']}"})

    def __call__(self, batch: dict) -> dict:
        return _out([self.timed(p) for p in _rows(batch)])

    def timed(self, payload: dict) -> dict:
        if self.startup is not None:
            self.startup.attach(payload)
        return _timed(self.name, self.run, payload, self.later_reads)


def _timed(name: str, fn, payload: dict, later_reads=_ALL) -> dict:
    """Run one stage on a payload: its time, its node, then the fields no later stage reads
    leave and the bytes handed on are recorded (``hops``)."""
    t0 = time.perf_counter()
    payload = fn(payload)
    payload["timings"][name] = payload["timings"].get(name, 0.0) + time.perf_counter() - t0
    payload.setdefault("nodes", {})[name] = _node()
    shrink(payload, later_reads)
    payload.setdefault("hops", {})[name] = payload_nbytes(payload)
    return payload


def _node() -> dict | None:
    """The Ray node this process runs on (id + IP, for the marker's `nodes`); None outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def build_extractor(cfg: dict, clock: dict | None = None):
    """An extractor from its resolved config node (its ``_target_`` class), as every actor builds it.

    ``clock``: where to add the seconds spent importing the class's module (torch, transformers)
    and building the model, under ``import`` and ``build`` (the actors' start-up record)."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    t0 = time.perf_counter()
    cls = get_class(cfg["_target_"])
    t1 = time.perf_counter()
    try:
        return cls(OmegaConf.create(cfg))
    finally:
        if clock is not None:
            clock["import"] = clock.get("import", 0.0) + t1 - t0
            clock["build"] = clock.get("build", 0.0) + time.perf_counter() - t1


def process_age() -> float:
    """Seconds since this process started: in an actor's constructor, what the Ray worker's own
    start and the unpickling of the stage (importing its modules) cost before our code ran."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


class StartupClock:
    """An actor's start-up, measured in its constructor and reported once, with its first shard:
    {"stage", "pid", "process_s" (worker start + unpickling), "import_s", "build_s", "init_s"}."""

    def __init__(self, stage: str):
        self.record = {"stage": stage, "pid": os.getpid(), "process_s": round(process_age(), 3)}
        self.t0, self.parts = time.perf_counter(), {}
        self.sent = False

    @contextmanager
    def part(self, name: str):
        """Add the seconds of the block to the part ``name`` (torch, decoder, ...)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    def done(self) -> None:
        """The constructor is finished: close the record (every part, and the constructor's whole time)."""
        parts = {"import": 0.0, "build": 0.0, **self.parts}
        self.record.update({f"{k}_s": round(v, 3) for k, v in parts.items()})
        self.record["init_s"] = round(time.perf_counter() - self.t0, 3)

    def attach(self, payload: dict) -> None:
        """Add the record to the first payload this actor hands on (once per actor)."""
        if not self.sent:
            payload.setdefault("startup", []).append(self.record)
            self.sent = True


class ExtractorStage:
    """Runs one extractor (built from its config, in the actor) over whole shards.

    The extractor sees the shard at once (so it can batch frames across videos). If it raises,
    the shard is re-run video by video, so one bad video costs only its own modality, recorded
    with the stage and the reason, and the partial outputs of the failing call are removed.
    """

    def __init__(self, name: str, cfg: dict, later_reads=_ALL, threads: int | None = None,
                 clock: dict | None = None):
        self.name, self.later_reads = name, tuple(later_reads)
        own = None if clock is not None else StartupClock(name)  # a pool's actor measures itself
        self.startup = own
        if threads is None:
            cpus = (cfg.get("resources") or {}).get("num_cpus", 1)
            threads = max(1, int(cpus)) if isinstance(cpus, (int, float)) else 1  # `auto` not fitted (outside a run)
        with own.part("torch") if own is not None else nullcontext():
            _set_threads(threads)
        # Ray keeps only the message of an error raised in an actor's constructor (ActorDiedError),
        # so a model that cannot be loaded is raised from the first call instead: a task error
        # keeps its type (RayTaskError.cause) and the driver catches it as ModelUnavailableError.
        self.unavailable: ModelUnavailableError | None = None
        try:
            self.extractor = build_extractor(cfg, clock if own is None else own.parts)
        except ModelUnavailableError as err:
            self.unavailable = err
        if own is not None:
            own.done()

    def _clear(self, video: dict, before: dict) -> None:
        for field in _OUTPUT_FIELDS:
            for key in set(video[field]) - set(before[field]):
                del video[field][key]

    def _fail(self, video: dict, before: dict, exc: Exception) -> None:
        self._clear(video, before)
        video["errors"].append(_entry(self.name, exc, trace=traceback.format_exc(limit=3)[-1500:]))

    def run(self, payload: dict) -> dict:
        active = [v for v in payload["videos"] if not v["failed"] and not v.get("carry")]
        if not active:
            return payload
        snapshot = [{f: dict(v[f]) for f in _OUTPUT_FIELDS} for v in active]
        try:
            self.extractor(payload)
        except Exception:
            pass
        else:
            for video, before in zip(active, snapshot):
                try:
                    check_finite(self.name, video, before)
                except NonFiniteOutput as exc:
                    self._fail(video, before, exc)
            return payload
        for video, before in zip(active, snapshot):
            self._clear(video, before)
            try:
                self.extractor({**payload, "videos": [video]})
                check_finite(self.name, video, before)
            except Exception as exc:
                self._fail(video, before, exc)
        return payload

    def __call__(self, batch: dict) -> dict:
        return _out([self.timed(p) for p in _rows(batch)])

    def timed(self, payload: dict) -> dict:
        if self.unavailable is not None:
            raise self.unavailable
        if self.startup is not None:
            self.startup.attach(payload)
        return _timed(self.name, self.run, payload, self.later_reads)


def _set_threads(threads: int) -> None:
    """Torch threads of this actor = its CPUs (fractional CPUs: one): never oversubscribe the node."""
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except ImportError:
        pass


class ShardWriterStage:
    """The one writer of each shard: writes it, marker last, and emits the marker as JSON.

    ``hashes``: the config hash of each modality this pass computes; ``pass_keys`` /
    ``pass_stages``: the store keys and stages it computes. A shard that already exists (its
    payload names a ``base``) keeps what this pass does not compute (see pipeline.store.load_base).
    ``token``: the store lease's generation this pass writes under (pipeline.lease): checked before
    a shard is started and, under the lease's fence, before it is swapped into place, so the
    writers of a run that lost the store (killed, or taken over) stop and change nothing.
    """

    def __init__(self, root: str, hashes: dict, compression: str, raw_maps: bool, pass_keys=(), pass_stages=(),
                 token: str | None = None):
        self.root, self.hashes = Path(root), dict(hashes)
        self.compression, self.raw_maps = compression, raw_maps
        self.pass_keys, self.pass_stages = set(pass_keys), set(pass_stages)
        self.token = token

    def check_lease(self) -> None:
        """Raise LeaseLostError when this pass's lease generation is no longer the store's."""
        if self.token is not None:
            check_lease(self.root, self.token)

    def __call__(self, batch: dict) -> dict:
        return {"marker": np.array([self.write(p) for p in _rows(batch)], dtype=object)}

    def write(self, payload: dict) -> str:
        """Write one shard's payload; returns its marker as JSON."""
        self.check_lease()
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
        tmp_token = uuid.uuid4().hex[:8]
        try:
            marker = write_shard(self.root, spec, payload["videos"], hashes=hashes,
                                 compression=self.compression, store_raw_maps=self.raw_maps, timings=timings,
                                 nodes=nodes, hops=payload.get("hops"), fence=partial(fenced, self.root, self.token),
                                 tmp_token=tmp_token)
        except BaseException as exc:  # a full disk, a lost lease: no half-written temporary stays behind
            shutil.rmtree(shard_tmp(self.root, spec, tmp_token), ignore_errors=True)
            if is_storage(exc):
                raise WriteRefused(str(exc), exc.errno, str(exc.filename or self.root / spec.relpath())) from exc
            raise
        marker["timings"]["write"] = time.perf_counter() - t0
        marker["videos_decoded"] = payload.get("decoded", 0)
        if payload.get("startup"):  # to the driver's report only; the marker on disk does not hold it
            marker["startup"] = payload["startup"]
        return json.dumps(marker)


class FusedStage:
    """The fused plan's actor: decode -> every extractor -> write, for whole shards, in one process.

    The stages are the same objects the per-stage pools run, called in the same order on the same
    payload, so the store's bytes are the same; nothing is pickled between them.
    """

    def __init__(self, decode_cfg: dict, extractors: dict, writer: dict, drops: dict, threads: int):
        self.startup = StartupClock("fused")
        with self.startup.part("torch"):  # the first import of torch in this process
            _set_threads(threads)
        with self.startup.part("decoder"):  # starting the decode child (it imports on its own)
            self.decode = DecodeStage(decode_cfg, drops["decode"], measure=False)
        self.stages = [ExtractorStage(n, cfg, drops[n], threads=threads, clock=self.startup.parts)
                       for n, cfg in extractors.items()]
        self.writer = ShardWriterStage(**writer)
        self.startup.done()

    def shard(self, blob: bytes) -> str:
        """One shard (its pickled initial payload) through decode -> every extractor -> the
        writer; its marker as JSON."""
        payload = pickle.loads(blob)
        self.writer.check_lease()  # a run that lost the store wastes no decoding on it
        self.startup.attach(payload)
        for stage in (self.decode, *self.stages):
            payload = stage.timed(payload)
        return self.writer.write(payload)


class FusedPool:
    """The fused plan on Ray core actors: the driver hands each actor its next shard as soon as it
    returns one (one shard in flight per actor, so no shard waits behind another while an actor
    is idle), and yields the markers as they come.

    The graph is a single map, so Ray Data's streaming executor brings nothing it needs, and a cold
    run paid for its helper actors (stats, actor locations, autoscaling: three more worker
    processes, ~3 s of CPU of a 30 s demo run on 2 cores) and its driver thread
    (docs/benchmarks.md, start-up). One process per actor: two pipelines as threads of one actor
    paid the imports once but lost more to the GIL (measured in docs/benchmarks.md). The actors
    are released when the pass ends or fails, so the next pass (or a rerun of unfinished shards)
    places its own.
    """

    def __init__(self, items: list[bytes], kwargs: dict, res: dict, restarts: int):
        self.items, self.kwargs, self.res, self.restarts = items, kwargs, res, restarts
        self.actors = max(1, min(int(res.get("concurrency", 1)), len(items)))

    def _actor(self):
        import ray

        res = self.res
        return ray.remote(FusedStage).options(
            num_cpus=float(res.get("num_cpus", 1)), num_gpus=float(res.get("num_gpus") or 0),
            max_restarts=int(res.get("max_restarts", self.restarts)),
            max_task_retries=int(res.get("max_task_retries", DEFAULT_TASK_RETRIES)),
            # one actor per node before two on one: Ray Data's default for its pools too
            scheduling_strategy="SPREAD").remote(**self.kwargs)

    def iter_rows(self):
        """``{"marker": json}`` per shard, in the order they finish; a shard's error is raised here."""
        import ray

        actors = [self._actor() for _ in range(self.actors)]
        todo, running = list(reversed(self.items)), {}
        try:
            for actor in actors:
                if todo:
                    running[actor.shard.remote(todo.pop())] = actor
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(ref)
                marker = ray.get(ref)
                if todo:
                    running[actor.shard.remote(todo.pop())] = actor
                yield {"marker": marker}
        finally:
            for actor in actors:  # at once: a failed pass's actors must not hold the CPUs of its rerun
                ray.kill(actor, no_restart=True)


def _resources(cfg: dict | None, restarts: int = DEFAULT_RETRIES) -> dict:
    """map_batches arguments from a stage's `resources` node (an actor pool of fixed size);
    ``restarts``: the actors' max_restarts where the node does not set it."""
    from ray.data import ActorPoolStrategy

    res = dict(cfg or {})
    out = {"num_cpus": float(res.get("num_cpus", 1)), "compute": ActorPoolStrategy(size=int(res.get("concurrency", 1))),
           "max_restarts": int(res.get("max_restarts", restarts)),
           "max_task_retries": int(res.get("max_task_retries", DEFAULT_TASK_RETRIES))}
    if res.get("num_gpus"):
        out["num_gpus"] = float(res["num_gpus"])
    return out


def configure_data(progress_bars: bool = False) -> None:
    """Ray Data's settings for the stages plan's streaming graph (in the driver, before it is
    built; the fused plan does not use Ray Data). ``progress_bars``: Ray Data's per-operator bars
    (``ray.progress_bars``; our own shard bar always shows the run)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = bool(progress_bars)
    if not progress_bars:
        # Ray Data warns once per process that its bars are off, advising to turn them on; here
        # they are off by the config, so that once is spent now. Its other warnings are untouched.
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    ctx.print_on_execution_start = False
    # A stage's own exception reaches the driver with its type (not wrapped in UserCodeException,
    # whose cause Ray does not carry across processes): _user_error catches it by class.
    ctx.raise_original_map_exception = True
    # Payloads (dicts of arrays) travel as Ray Data's pickled-object column, by choice: saying so
    # keeps Ray from warning about it once per actor.
    ctx.enable_fallback_to_arrow_object_ext_type = True


def build_dataset(jobs, features: dict, *, root: Path, hashes: dict, store_cfg: dict, decode_resources: dict,
                  plan: str = "stages", fused: dict | None = None, token: str | None = None,
                  restarts: int = DEFAULT_RETRIES):
    """The graph of one pass, lazy (nothing runs until its ``iter_rows()`` is consumed): a Ray
    dataset for the stages plan, a FusedPool for the fused plan.

    ``jobs``: (spec, entries, base shard dir or None, ids carried whole from the base);
    ``features``: the resolved config of the modalities this pass computes; ``hashes``: theirs;
    ``plan``: "stages" (a pool per stage) or "fused" (``fused``: the resources of its actors);
    ``token``: the store lease generation the writers check (None: unfenced); ``restarts``: the
    actors' max_restarts where a stage's resources do not say (LOCAL_RETRIES on a local Ray).
    """
    items = [{"shard_id": spec.shard_id,
              "payload": _dump(initial_payload(spec, entries, carry=carry, base=str(base) if base else None))}
             for spec, entries, base, carry in jobs]
    raw_maps = bool(store_cfg.get("raw_maps", False))
    drops = drop_plan(features["extractors"], raw_maps=raw_maps)
    pass_keys = [k for m in features["modalities"] for k in MODALITIES[m].store_keys]
    writer = {"root": str(root), "hashes": hashes, "compression": store_cfg.get("compression", "auto"),
              "raw_maps": raw_maps, "pass_keys": pass_keys,
              "pass_stages": ["decode", "extract", *features["extractors"]], "token": token}
    if plan == "fused":
        res = dict(fused or {})
        threads = max(1, int(float(res.get("num_cpus", 1))))
        return FusedPool([item["payload"] for item in items],
                         {"decode_cfg": features["decode"], "extractors": features["extractors"], "writer": writer,
                          "drops": drops, "threads": threads}, res, restarts)
    if plan != "stages":
        raise ValueError(f"unknown plan {plan!r}: stages | fused")
    import ray.data

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = _map(ds, DecodeStage, {"decode_cfg": features["decode"], "later_reads": drops["decode"]}, decode_resources,
              restarts)
    for name, ext in features["extractors"].items():
        ds = _map(ds, ExtractorStage, {"name": name, "cfg": ext, "later_reads": drops[name]}, ext.get("resources"),
                  restarts)
    return _map(ds, ShardWriterStage, writer, store_cfg.get("resources"), restarts)


def _map(ds, cls, kwargs: dict, resources: dict | None, restarts: int = DEFAULT_RETRIES):
    """One stage's actor pool, a shard per call.

    Ray Data 2.60 has no named parameter for ``max_restarts`` / ``max_task_retries`` (the bounded
    retries of architecture.md), only the ``**ray_remote_args`` it warns about as deprecated on
    every call; that one warning is silenced here. A Ray without them fails loudly at this call.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        return ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=1, **_resources(resources, restarts))
