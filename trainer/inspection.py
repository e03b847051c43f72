"""What a checkpoint holds and whether it fits a config (scripts/inspect_ckpt.py, `make inspect`).

    make inspect CKPT=outputs/train/demo                              # what it holds (checksums verified)
    make inspect CKPT=outputs/train/demo ARGS="model.modalities=[rgb]"   # ... and each mismatch with that config

Read only through trainer/checkpoint.py's public API (verify, resolve, checkpoints, identity_diff)
and safetensors' header (shapes, without loading the tensors). A mismatch names its key, the
checkpoint's value and the config's, and what it breaks: `load` (the weights do not fit the model
that config builds), `eval` (make eval refuses the features), `resume` (make train refuses to
continue the run; evaluation is unaffected).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

from safetensors import safe_open

from core.features import modality_hashes
from core.store import read_store_meta, registry
from core.util import to_plain
from model.config import CremaConfig
from trainer import checkpoint
from trainer.config import TrainerConfig

PARTS = ("LoRA", "query tokens", "LayerNorm", "projection", "audio input", "fusion")
_HEAD = re.compile(r"^mmqa\.heads\.([^.]+)\.(query_tokens|ln|proj|input_proj)\b")
_LORA = re.compile(r"\.lora_[AB]\.([^.]+)\.")
_HEAD_PART = {"query_tokens": "query tokens", "ln": "LayerNorm", "proj": "projection", "input_proj": "audio input"}
# keys the trainer fills from the store or the training answers: not a config's to disagree with
DERIVED = ("phrase_tokens", "init")


def find(path: str | Path) -> Path:
    """The checkpoint to inspect: `path` itself, or in a run folder / checkpoints folder its newest
    last-* (it holds the most: optimizer, RNG, position), else its best-*."""
    path = Path(path)
    if not path.exists():
        raise checkpoint.CheckpointError(f"no checkpoint at {path}: give CKPT=<a checkpoint folder, a run's "
                                         f"checkpoints/ folder or its run folder> (make train writes them)")
    if (path / "checkpoints").is_dir() and not (path / checkpoint.STATE).exists():
        path = path / "checkpoints"
    lasts = [] if (path / checkpoint.STATE).exists() else checkpoint.checkpoints(path, "last")
    return lasts[-1] if lasts else checkpoint.resolve(path, "best")


def module_table(shapes: dict[str, tuple], modalities: list[str]) -> dict[str, dict]:
    """{module: {"tensors", "parameters", part: parameters}}: one row per modality's MMQA, then
    the fusion, then anything else (there should be nothing)."""
    rows: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for key, shape in shapes.items():
        module, part = _module_of(key)
        n = 1
        for d in shape:
            n *= d
        rows[module][part] += n
        rows[module]["tensors"] += 1
        rows[module]["parameters"] += n
    order = [f"MMQA-{m}" for m in modalities] + ["fusion"]
    return {k: dict(rows[k]) for k in sorted(rows, key=lambda k: (order.index(k) if k in order else len(order), k))}


def _module_of(key: str) -> tuple[str, str]:
    head, lora = _HEAD.match(key), _LORA.search(key)
    if head:
        return f"MMQA-{head.group(1)}", _HEAD_PART[head.group(2)]
    if lora:
        return f"MMQA-{lora.group(1)}", "LoRA"
    if key.startswith("fusion."):
        return "fusion", "fusion"
    return "other", "other"


def _shapes(directory: Path) -> dict[str, tuple]:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def holdings(directory: Path) -> dict:
    """Everything a checkpoint holds, after verifying state.json's digest and every file's checksum
    (CorruptCheckpoint naming the first bad file)."""
    state = checkpoint.verify(directory)
    mc = state.get("model_config", {})
    modules = module_table(_shapes(directory), mc.get("modalities", []))
    return {"checkpoint": str(directory), "kind": state.get("kind"), "origin": _origin(state),
            "weights": _weights(state), "run_id": state.get("run_id"),
            "dataset": state.get("run", {}).get("dataset"), "seed": state.get("run", {}).get("seed"),
            "modalities": mc.get("modalities", []), "fusion": mc.get("fusion"),
            "fused_modalities": _fused(mc), "model_config_hash": checkpoint.run_id_of(mc),
            "feature_hashes": state.get("feature_hashes", {}), "trained": _trained(state),
            "modules": modules, "parameters": sum(r["parameters"] for r in modules.values()),
            "files": {f: w["bytes"] for f, w in state["files"].items()}, "checksums": "verified",
            "resumable": "optimizer.safetensors" in state["files"]}


def _fused(mc: dict) -> list[str]:
    try:
        return CremaConfig.from_dict(mc).fused_modalities
    except (TypeError, ValueError):  # a config of another version: the table still says the rest
        return []


def _origin(state: dict) -> dict:
    source = state.get("imported_from")
    if source:
        return {"how": "converted from the reference (make import-ckpt)", "file": source.get("file"),
                "sha256": source.get("sha256"), "reference_modalities": source.get("modalities")}
    return {"how": "trained here (make train)"}


def _weights(state: dict) -> str:
    """Whether the frozen backbone the weights were trained against was real or random."""
    if state.get("weights") == "random":
        return "random (weights=random: a dry run's checkpoint, not a model)"
    if not state.get("model_config", {}).get("pretrained", True):
        return "random-init backbone (a tiny preset: real training, no pretrained knowledge)"
    mc = state["model_config"]
    return f"pretrained backbone ({mc.get('blip2')}@{mc.get('blip2_revision')}, {mc.get('t5_model')}@{mc.get('t5_revision')})"


def _trained(state: dict) -> dict | None:
    ts = state.get("train_state")
    if ts is None:
        return None  # a converted release: the reference's own training, not recorded here
    # a best-* is saved at the end of its epoch, before the epoch counter moves on
    done = ts["epoch"] + (1 if state.get("kind") == "best" else 0)
    return {"steps": ts["step"], "epoch": ts["epoch"], "samples": ts.get("samples"), "epochs_done": done,
            "finished": ts["finished"], "early_exits": ts.get("exited", {}), "best": ts.get("best", {})}


# ---------------------------------------------------------------------- matching a config


def mismatches(state: dict, cfg, *, store: Path | None = None) -> list[dict]:
    """[{"key", "checkpoint", "config", "affects"}] between a checkpoint's state.json and a composed
    train config (`cfg`: model, dataset, features, trainer, seed); `store`: also that store's hashes."""
    out = _model_mismatches(state.get("model_config", {}), cfg)
    mods = state.get("model_config", {}).get("modalities", [])
    imported = "imported_from" in state
    if not imported:  # a release was trained on the reference's own features: no hash of ours to compare
        out += _differ("features", state.get("feature_hashes", {}), modality_hashes(cfg.features, mods), "eval")
        run = state.get("run", {})
        out += _differ("", {"dataset": run.get("dataset"), "seed": run.get("seed")},
                       {"dataset": cfg.dataset.name, "seed": cfg.seed}, "resume")
        out += _differ("trainer", run.get("trainer", {}), TrainerConfig.from_cfg(cfg.trainer).resume_view(), "resume")
    else:
        prompt = dataclasses.asdict(TrainerConfig.from_cfg(cfg.trainer).prompt)
        out += _differ("trainer.prompt", state.get("prompt", {}), prompt, "eval")
    if store is not None and not imported:
        have = registry(read_store_meta(store))
        out += _differ(f"store {store}", state.get("feature_hashes", {}),
                       {m: have.get(m, "<not in the store>") for m in mods}, "eval")
    return out


def _model_mismatches(saved: dict, cfg) -> list[dict]:
    wanted = to_plain(cfg.model)
    wanted.pop("_target_", None)
    # null in a preset: the trainer takes it from the store (widths); the answers' tokens come from
    # the training split; a key the checkpoint does not record is an older trainer's, not a difference
    wanted = {k: v for k, v in wanted.items() if v is not None and k not in DERIVED and k in saved}
    # only what the config sets: the builder adds keys of its own inside qformer / t5
    return _differ("model", saved, wanted, "load", keys=set(_flat(wanted)))


def _differ(prefix: str, saved: dict, wanted: dict, affects: str, keys: set | None = None) -> list[dict]:
    a, b = _flat(saved), _flat(wanted)
    return [{"key": f"{prefix}.{k}" if prefix else k, "checkpoint": a.get(k, "<absent>"),
             "config": b.get(k, "<absent>"), "affects": affects}
            for k in sorted(keys if keys is not None else set(a) | set(b)) if _norm(a.get(k)) != _norm(b.get(k))]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _norm(value):
    """JSON round trips turn tuples into lists and some floats into ints: compare values, not types."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# ---------------------------------------------------------------------- the report


def report(view: dict, found: list[dict] | None, against: str | None) -> list[str]:
    """The human table (the CLI prints a JSON line after it)."""
    lines = [f"checkpoint   {view['checkpoint']} ({view['kind']}: "
             f"{'weights, optimizer, RNG and position: resumable' if view['resumable'] else 'weights only'})",
             f"origin       {_origin_line(view)}",
             f"weights      {view['weights']}",
             "checksums    verified: " + ", ".join(f"{f} ({n:,} bytes)" for f, n in view["files"].items()),
             f"modalities   {', '.join(view['modalities'])} (fusion {view['fusion']} over "
             f"{', '.join(view['fused_modalities'] or []) or 'none'})",
             f"trained      {_trained_line(view['trained'])}",
             f"model config hash  {view['model_config_hash']}",
             "feature hashes     " + (", ".join(f"{m} {h}" for m, h in view["feature_hashes"].items())
                                     or "none recorded (the reference's own features)"),
             "", f"| module | tensors | {' | '.join(PARTS)} | parameters |", f"|---|---:|{'---:|' * (len(PARTS) + 1)}"]
    for module, row in view["modules"].items():
        cells = " | ".join(f"{row[p]:,}" if row.get(p) else "-" for p in PARTS)
        lines.append(f"| {module} | {row['tensors']} | {cells} | {row['parameters']:,} |")
    lines.append(f"| **all** | {sum(r['tensors'] for r in view['modules'].values())} |{' |' * len(PARTS)} "
                 f"**{view['parameters']:,}** |")
    if found is not None:
        lines += ["", f"against {against}: " + (f"{len(found)} mismatches" if found else "matches")]
        if found:
            lines += ["| key | checkpoint | config | breaks |", "|---|---|---|---|"]
            lines += [f"| {m['key']} | {m['checkpoint']!r} | {m['config']!r} | {m['affects']} |" for m in found]
    return lines


def _origin_line(view: dict) -> str:
    origin = view["origin"]
    if "file" in origin:
        return (f"{origin['how']}: {origin['file']} (sha256 {origin['sha256'][:12]}, its modalities "
                f"{origin['reference_modalities']})")
    return f"{origin['how']}: run {view['run_id']}, dataset {view['dataset']}, seed {view['seed']}"


def _trained_line(trained: dict | None) -> str:
    if trained is None:
        return "not here (converted: the reference's training is not recorded in its file)"
    exits = ", ".join(f"{m} at epoch {e}" for m, e in trained["early_exits"].items()) or "none"
    best = trained["best"]
    best_text = f"; best val strict {best['strict']:.1f}% at epoch {best['epoch']}" if best else ""
    return (f"{trained['steps']} optimizer steps, {trained['epochs_done']} epochs done (epoch {trained['epoch']} "
            f"question {trained['samples']} of the epoch), {'finished' if trained['finished'] else 'not finished'}; "
            f"early exits: {exits}{best_text}")
