"""Checkpoints: safetensors for tensors, JSON for the rest, one directory per checkpoint.

    <run>/checkpoints/last-000120/   model.safetensors      every trainable parameter of EVERY modality
                                     optimizer.safetensors  AdamW moments and steps, keyed by parameter name
                                     rng.safetensors        torch CPU/CUDA and numpy generator states
                                     state.json             written LAST: config, position, scheduler, ...
    <run>/checkpoints/best-000100/   model.safetensors + state.json (the best-on-validation weights)

A directory counts only once its state.json exists (written last, then the directory is renamed
into place), so a kill at any moment leaves the previous checkpoint usable. The reference saved
only parameters with requires_grad=True, which after a modality-sequential epoch dropped every
modality but the last; here the set of saved names is fixed by the model, not by flags.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.util import TMP_PREFIX, write_json_atomic

STATE = "state.json"
_NAME = re.compile(r"^(last|best)-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model or optimizer it is loaded into."""


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save(root: Path, kind: str, step: int, *, model, state: dict, optimizer=None, keep: int = 1) -> Path:
    """Write checkpoint `<root>/<kind>-<step>` atomically and keep the newest `keep` of that kind."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{kind}-{step:06d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    _save_tensors(model.trainable_state(), tmp / "model.safetensors")
    if optimizer is not None:
        _save_tensors(optimizer_tensors(model, optimizer), tmp / "optimizer.safetensors")
        _save_tensors(rng_tensors(), tmp / "rng.safetensors")
        state = {**state, "rng": rng_json(), "optimizer_groups": optimizer_groups(optimizer)}
    state = {**state, "kind": kind, "step": step}
    write_json_atomic(tmp / STATE, state)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in checkpoints(root, kind)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(root: Path, kind: str) -> list[Path]:
    """Complete checkpoints of `kind` under `root`, oldest first."""
    found = []
    for d in Path(root).glob(f"{kind}-*"):
        match = _NAME.match(d.name)
        if match and (d / STATE).exists():
            found.append((int(match.group(2)), d))
    return [d for _, d in sorted(found)]


def resolve(path: str | Path, kind: str = "best") -> Path:
    """A checkpoint directory: `path` itself, or the newest `kind` checkpoint inside it."""
    path = Path(path)
    if (path / STATE).exists():
        return path
    found = checkpoints(path, kind)
    if not found:
        raise CheckpointError(f"no complete {kind} checkpoint at {path} (looked for {path}/{kind}-*/{STATE}); "
                              f"train first (make train) or pass the checkpoint directory itself")
    return found[-1]


def read_state(directory: Path) -> dict:
    return json.loads((Path(directory) / STATE).read_text())


def load_model(model, directory: Path) -> None:
    """Load trainable weights strictly: refuse unknown, missing or reshaped parameters."""
    path = Path(directory) / "model.safetensors"
    saved = load_file(str(path))
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
    tensors = load_file(str(Path(directory) / "optimizer.safetensors"))
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
    tensors = load_file(str(Path(directory) / "rng.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(saved["python"]))
