"""Checkpoints: safetensors for tensors, JSON for the rest, one directory per checkpoint.

    <run>/checkpoints/last-000120-e004/  model.safetensors      every trainable parameter of EVERY modality
                                         optimizer.safetensors  AdamW moments and steps, keyed by parameter name
                                         rng.safetensors        torch CPU/CUDA and numpy generator states
                                         state.json             written LAST: run identity, position, scheduler,
                                                                the sha256 and size of every file above
    <run>/checkpoints/best-000100-e003/  model.safetensors + state.json (the best-on-validation weights)

The name holds the position (optimizer step, epoch): an end-of-epoch save and a mid-epoch save
at the same step are different positions (epoch e+1 batch 0 vs epoch e at its end), so two saves
share a name only when a resumed run redoes a position, and then hold the same content.

Save protocol (a kill at any instant leaves the previous good checkpoint loadable):
write every file into `.tmp-<name>-<id>/` and fsync it, state.json last, fsync the folder,
rename it to `<name>`, fsync the parent, and only then prune older ones. A folder counts only
once its state.json parses and its digest matches; the files it lists are verified against their
checksums before any load (resume, eval). A name that already holds a valid checkpoint is left
as it is (the same position, the same content); an invalid one is set aside first.

The reference saved only parameters with requires_grad=True, which after a modality-sequential
epoch dropped every modality but the last; here the set of saved names is fixed by the model,
not by flags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as serialize

from core.util import TMP_PREFIX, fsync_path
from trainer.killpoints import reached

log = logging.getLogger(__name__)

STATE = "state.json"
SET_ASIDE = "corrupt-"  # prefix of a checkpoint found invalid: kept for inspection, never loaded
_NAME = re.compile(r"^(last|best)-(\d+)-e(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked (missing, a best-* given to resume, another model)."""

    exit_code = 2


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that is missing, truncated or differs from the checksum recorded at save."""

    exit_code = 3


class RunMismatch(CheckpointError):
    """Checkpoints or features of another run (other settings, other data, other feature hashes)."""

    exit_code = 4


class SaveFailed(CheckpointError):
    """Writing a checkpoint failed (disk full, no permission): the partial copy is removed."""

    exit_code = 5


def name(kind: str, step: int, epoch: int) -> str:
    """The folder name of the checkpoint of `kind` at (optimizer step, epoch)."""
    return f"{kind}-{step:06d}-e{epoch:03d}"


def _position(directory: Path) -> tuple[int, int] | None:
    match = _NAME.match(Path(directory).name)
    return (int(match.group(2)), int(match.group(3))) if match else None


# ---------------------------------------------------------------------- durable writes


def _write_durable(path: Path, data: bytes) -> dict:
    """Write `data` to `path`, fsynced; its size and sha256 as state.json records them."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return serialize({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def _digest(state: dict) -> str:
    body = {k: v for k, v in state.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(root: Path, kind: str, *, step: int, epoch: int, model, state: dict, optimizer=None,
         keep: int | None = 2, run_id: str | None = None) -> Path:
    """Write checkpoint `<root>/<kind>-<step>-e<epoch>` durably (protocol in the module docstring),
    then keep the newest `keep` of that kind and run (None: prune nothing). Raises SaveFailed
    when a write fails."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name(kind, step, epoch)
    tmp = root / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:6]}"
    try:
        _write_folder(tmp, kind, model=model, optimizer=optimizer,
                      state={**state, "kind": kind, "step": step, "epoch": epoch, "run_id": run_id})
        _put_in_place(tmp, final, kind)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial copy would eat the space a retry needs
        newest = checkpoints(root, kind, run_id)
        raise SaveFailed(
            f"writing checkpoint {final} failed: {exc.strerror or exc} ({exc.filename or tmp}); the partial copy "
            f"was removed and {newest[-1] if newest else 'no earlier checkpoint'} is the newest {kind} checkpoint. "
            f"Free space (or fix the permission) and run the same command to resume.") from exc
    reached(f"{kind}:durable")
    if keep is not None:
        prune(root, kind, keep, run_id)
    reached(f"{kind}:pruned")
    return final


def _write_folder(tmp: Path, kind: str, *, model, optimizer, state: dict) -> None:
    tmp.mkdir()
    files = {"model.safetensors": _write_durable(tmp / "model.safetensors", _tensor_bytes(model.trainable_state()))}
    if optimizer is not None:
        files["optimizer.safetensors"] = _write_durable(tmp / "optimizer.safetensors",
                                                        _tensor_bytes(optimizer_tensors(model, optimizer)))
        files["rng.safetensors"] = _write_durable(tmp / "rng.safetensors", _tensor_bytes(rng_tensors()))
        state = {**state, "rng": rng_json(), "optimizer_groups": optimizer_groups(optimizer)}
    reached(f"{kind}:tensors")
    state = {**state, "files": files}
    state["digest"] = _digest(state)
    _write_durable(tmp / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    fsync_path(tmp)
    reached(f"{kind}:written")


def _put_in_place(tmp: Path, final: Path, kind: str) -> None:
    if final.exists():
        try:
            verify(final)
            log.info("%s already holds this position: kept, the new copy dropped", final)
            shutil.rmtree(tmp)
            return
        except CorruptCheckpoint as exc:
            set_aside(final, str(exc))
    os.rename(tmp, final)
    reached(f"{kind}:renamed")
    fsync_path(final.parent)


def prune(root: Path, kind: str, keep: int, run_id: str | None) -> None:
    """Delete all but the newest `keep` checkpoints of `kind` of run `run_id` (never another run's)."""
    for old in checkpoints(root, kind, run_id)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def prune_best(root: Path, run_id: str | None) -> None:
    """Delete this run's best-* checkpoints except the newest and any a remaining last-* names
    (a resume from that last-* restores its best score, and `pick_best` follows it)."""
    named = set()
    for last in checkpoints(root, "last", run_id):
        try:
            best = read_state(last)["train_state"].get("best")
        except CorruptCheckpoint:
            continue
        if best:
            named.add(name("best", best["step"], best["epoch"]))
    bests = checkpoints(root, "best", run_id)
    for old in bests[:-1]:
        if old.name not in named:
            shutil.rmtree(old, ignore_errors=True)


def set_aside(directory: Path, why: str) -> Path:
    """Rename an invalid checkpoint out of every lookup (kept for inspection) and say so."""
    directory = Path(directory)
    aside = directory.with_name(f"{SET_ASIDE}{directory.name}-{uuid.uuid4().hex[:6]}")
    os.rename(directory, aside)
    log.warning("set aside as %s: %s", aside.name, why)
    return aside


def clean_temporaries(root: Path) -> list[Path]:
    """Remove the `.tmp-*` folders and files that killed or failed saves left under `root`."""
    found = sorted(Path(root).glob(f"{TMP_PREFIX}*")) if Path(root).is_dir() else []
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if found:
        log.info("removed %d leftover temporaries of interrupted saves in %s", len(found), root)
    return found


# ---------------------------------------------------------------------- finding and checking


def checkpoints(root: Path, kind: str, run_id: str | None = None) -> list[Path]:
    """Checkpoints of `kind` under `root` whose state.json exists, oldest position first; with
    `run_id`, only those whose state.json names that run (unreadable ones are left out)."""
    found = []
    for d in Path(root).glob(f"{kind}-*"):
        pos = _position(d)
        if pos and (d / STATE).exists() and (run_id is None or _run_of(d) == run_id):
            found.append((pos, d))
    return [d for _, d in sorted(found)]


def _run_of(directory: Path) -> str | None:
    try:
        return json.loads((Path(directory) / STATE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def read_state(directory: Path) -> dict:
    """state.json, refused (CorruptCheckpoint naming it) when it is missing, torn or altered."""
    path = Path(directory) / STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"{path} is missing or unreadable ({exc}): this checkpoint cannot be used") from exc
    if "digest" in state and state["digest"] != _digest(state):
        raise CorruptCheckpoint(f"{path} differs from the digest recorded in it: this checkpoint cannot be used")
    return state


def verify(directory: Path) -> dict:
    """Check state.json and every file it lists against the size and sha256 recorded at save;
    the state. Raises CorruptCheckpoint naming the first bad file."""
    directory = Path(directory)
    state = _recorded(directory)
    for file, want in state["files"].items():
        _check(directory / file, _read(directory / file), want)
    return state


def _recorded(directory: Path) -> dict:
    state = read_state(directory)
    if "files" not in state:
        raise CorruptCheckpoint(f"{Path(directory) / STATE} records no checksums: it was written by an older "
                                f"trainer that did not check its files; train again (trainer.resume=never)")
    return state


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"{path} is missing or unreadable ({exc.strerror})") from exc


def _check(path: Path, data: bytes, want: dict) -> None:
    if len(data) != want["bytes"]:
        raise CorruptCheckpoint(f"{path} is {len(data)} bytes, {want['bytes']} were saved (truncated?)")
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise CorruptCheckpoint(f"{path} differs from the sha256 recorded at save (a flipped or overwritten byte)")


def _tensors(directory: Path, file: str) -> dict[str, torch.Tensor]:
    """A file's tensors, checked against its recorded checksum (read once: the check and the
    load see the same bytes)."""
    directory = Path(directory)
    state = _recorded(directory)
    if file not in state["files"]:
        hint = " (a best-* holds weights only: resume from a last-* checkpoint)" if state.get("kind") == "best" else ""
        raise CheckpointError(f"{directory} has no {file}{hint}")
    data = _read(directory / file)
    _check(directory / file, data, state["files"][file])
    return load_bytes(data)


def resolve(path: str | Path, kind: str = "best") -> Path:
    """A checkpoint directory: `path` itself, or the chosen `kind` checkpoint inside it (for best:
    the best of the run that wrote the newest last-*, see `pick_best`)."""
    path = Path(path)
    if (path / STATE).exists() or _position(path):
        return path
    found = pick_best(path) if kind == "best" else (checkpoints(path, kind) or [None])[-1]
    if found is None:
        raise CheckpointError(f"no complete {kind} checkpoint at {path} (looked for {path}/{kind}-*/{STATE}); "
                              f"train first (make train) or pass the checkpoint directory itself")
    return found


def pick_best(folder: Path) -> Path | None:
    """The best-on-validation checkpoint of the run in `folder`: the one the newest readable last-*
    names; without a last-*, the newest best-* when all best-* belong to one run."""
    for last in reversed(checkpoints(folder, "last")):
        try:
            state = read_state(last)
        except CorruptCheckpoint:
            continue
        best = state["train_state"].get("best")
        if best:
            chosen = Path(folder) / name("best", best["step"], best["epoch"])
            if not (chosen / STATE).exists():
                raise CheckpointError(f"{last} names {chosen} as its run's best, which is missing")
            return chosen
    bests = checkpoints(folder, "best")
    runs = {_run_of(b) for b in bests}
    if len(runs) > 1:
        raise RunMismatch(f"{folder} holds best checkpoints of {len(runs)} runs ({', '.join(b.name for b in bests)}) "
                          f"and no last-* to tell which is current: pass ckpt=<one of them>")
    return bests[-1] if bests else None


def identity_diff(saved: dict, mine: dict) -> list[str]:
    """'key (saved then, now)' for each dotted key whose value differs between two run identities."""
    a, b = _flatten(saved), _flatten(mine)
    return [f"{k} ({a.get(k, '<absent>')!r} then, {b.get(k, '<absent>')!r} now)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def run_id_of(identity: dict) -> str:
    """A short digest of a run identity (what a checkpoint's run_id is)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_model(model, directory: Path) -> None:
    """Load trainable weights strictly (checksum verified first): refuse unknown, missing or
    reshaped parameters."""
    path = Path(directory) / "model.safetensors"
    saved = _tensors(directory, "model.safetensors")
    own = model.trainable_state()
    unknown, missing = sorted(set(saved) - set(own)), sorted(set(own) - set(saved))
    if unknown or missing:
        raise CheckpointError(
            f"{path} does not fit this model (modalities {model.modalities}, fusion {model.config.fusion}): "
            f"{len(unknown)} unknown keys {unknown[:4]}, {len(missing)} missing keys {missing[:4]}. Build the "
            f"model from the checkpoint's own config (scripts/eval.py does) or train with the same model.* options."
        )
    reshaped = [k for k in own if own[k].shape != saved[k].shape]
    if reshaped:
        k = reshaped[0]
        raise CheckpointError(f"{path}: {len(reshaped)} parameters have other shapes, e.g. {k} "
                              f"{tuple(saved[k].shape)} in the file vs {tuple(own[k].shape)} in the model")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(saved[k].to(p.dtype))


# ---------------------------------------------------------------------- resume: which checkpoint


def mismatch(directory: Path, saved: dict, identity: dict) -> RunMismatch:
    """The error for a checkpoint of another run, naming the identity keys that differ."""
    diff = identity_diff(saved["run"], identity) if "run" in saved else []
    more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
    return RunMismatch(
        f"{directory} belongs to another run: {'; '.join(diff[:8]) or 'written by an older trainer'}{more}. Resume "
        f"with the same config and data, pass run_dir=<new folder>, or trainer.resume=never to start over there.")


def refuse_other_runs(root: Path, run_id: str, identity: dict) -> None:
    """Raise RunMismatch when `root` holds a readable checkpoint of another run (unreadable ones
    are judged when they are loaded)."""
    for kind in ("last", "best"):
        for directory in checkpoints(root, kind):
            try:
                saved = read_state(directory)
            except CorruptCheckpoint:
                continue
            if saved.get("run_id") != run_id:
                raise mismatch(directory, saved, identity)


def newest_valid_last(root: Path) -> Path | None:
    """The newest last-* under `root` whose files all match their checksums. Newer corrupt ones
    get an `error:` line each and are set aside once a valid one is found; when none is valid,
    CorruptCheckpoint (nothing is deleted)."""
    corrupt = []
    for directory in reversed(checkpoints(root, "last")):
        try:
            verify(directory)
        except CorruptCheckpoint as exc:
            print(f"error: {exc}", file=sys.stderr)
            corrupt.append((directory, str(exc)))
            continue
        for bad, why in corrupt:
            set_aside(bad, why)
        if corrupt:
            log.warning("resuming from %s, the newest valid checkpoint, instead", directory)
        return directory
    if corrupt:
        raise CorruptCheckpoint(f"no valid last checkpoint in {root} ({len(corrupt)} corrupt, named above): nothing "
                                f"to resume from. Restore them, or start over with trainer.resume=never.")
    return None


def drop_later_lasts(root: Path, directory: Path, run_id: str) -> None:
    """Resuming from an earlier last-* of `root`: delete the later ones of the run, a future the
    resumed run recomputes; left in place, a later resume=auto would pick them over the rewound
    metrics."""
    if Path(directory).parent.resolve() != Path(root).resolve():
        return
    for later in checkpoints(root, "last", run_id):
        if later.name > Path(directory).name:
            log.warning("resuming from %s: deleting the later %s of this run", directory, later.name)
            shutil.rmtree(later)


# ---------------------------------------------------------------------- optimizer


def _names_by_position(model, optimizer) -> list[str]:
    names = {id(p): n for n, p in model.trainable_state().items()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors `<param name>::<field>` (parameters never stepped have none)."""
    out = {}
    state = optimizer.state_dict()["state"]
    for pos, name in enumerate(_names_by_position(model, optimizer)):
        for field, value in state.get(pos, {}).items():
            out[f"{name}::{field}"] = torch.as_tensor(value)
    return out


def optimizer_groups(optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def load_optimizer(model, optimizer, directory: Path, groups: list[dict]) -> None:
    tensors = _tensors(directory, "optimizer.safetensors")
    names = _names_by_position(model, optimizer)
    known = set(names)
    unknown = sorted({k.split("::")[0] for k in tensors} - known)
    if unknown:
        raise CheckpointError(f"{directory}: optimizer state for parameters this model lacks: {unknown[:4]}")
    state: dict[int, dict] = {}
    for pos, name in enumerate(names):
        fields = {k.split("::")[1]: v for k, v in tensors.items() if k.split("::")[0] == name}
        if fields:
            state[pos] = fields
    current = optimizer.state_dict()
    if len(groups) != len(current["param_groups"]):
        raise CheckpointError(f"{directory}: {len(groups)} optimizer groups saved, {len(current['param_groups'])} now")
    param_groups = [{**saved, "params": g["params"]} for saved, g in zip(groups, current["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


# ---------------------------------------------------------------------- RNG


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    out["numpy_keys"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    return out


def rng_json() -> dict:
    kind, _, pos, has_gauss, gauss = np.random.get_state()
    return {"python": _to_lists(random.getstate()), "numpy": [kind, int(pos), int(has_gauss), float(gauss)]}


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def restore_rng(directory: Path, saved: dict) -> None:
    tensors = _tensors(directory, "rng.safetensors")
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(saved["python"]))
