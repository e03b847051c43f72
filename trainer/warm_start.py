"""`model.init=<checkpoint>`: start a run from saved trainable weights, as the reference's run
scripts start from crema_initial.pth (a converted CREMA release or an earlier run of this project).

Loaded per owner (one modality's MMQA, or the fusion), never partly: a modality the checkpoint
has is loaded whole and must fit exactly; a modality it lacks keeps its fresh initialisation
(BLIP-2's heads); the fusion is loaded only when the checkpoint fuses the same modalities in the
same order (its input columns mean those modalities). What was loaded and what was not is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from trainer import checkpoint

log = logging.getLogger(__name__)


def owners(model) -> dict[str, list[str]]:
    """Parameter names per owner (modality or "fusion")."""
    names = {id(p): n for n, p in model.trainable_state().items()}
    return {owner: [names[id(p)] for p in params] for owner, params in model.module_parameters().items()}


def warm_start(model, path: str | Path) -> dict[str, list[str]]:
    """Copy the checkpoint's weights into `model` owner by owner; returns {"loaded": [...], "fresh": [...]}."""
    if Path(path).is_file():
        raise checkpoint.CheckpointError(f"model.init={path} is a file; it takes a checkpoint of this project. A CREMA "
                                         f".pth converts first: make import-ckpt SRC={path} DATASET=<name>, then "
                                         f"model.init=outputs/imported/{Path(path).stem}")
    directory = checkpoint.resolve(path, "best")
    saved = load_file(str(Path(directory) / "model.safetensors"))
    saved_config = checkpoint.read_state(directory).get("model_config", {})
    own = model.trainable_state()
    report = {"loaded": [], "fresh": []}
    for owner, names in owners(model).items():
        present = [n for n in names if n in saved]
        if not present or (owner == "fusion" and _fused(saved_config) != model.config.fused_modalities):
            report["fresh"].append(owner)
            continue
        if len(present) != len(names):
            raise checkpoint.CheckpointError(f"{directory} has only part of {owner}'s weights "
                                             f"({len(present)} of {len(names)}): not a checkpoint to start from")
        reshaped = [n for n in names if tuple(saved[n].shape) != tuple(own[n].shape)]
        if reshaped:
            raise checkpoint.CheckpointError(f"model.init={path}: {reshaped[0]} is {tuple(saved[reshaped[0]].shape)} "
                                             f"there, {tuple(own[reshaped[0]].shape)} in this model (model.* sizes)")
        with torch.no_grad():
            for n in names:
                own[n].copy_(saved[n].to(own[n].dtype))
        report["loaded"].append(owner)
    log.info("model.init=%s (%s): loaded %s; fresh (not in it, or fused differently): %s", path, directory,
             report["loaded"], report["fresh"])
    return report


def _fused(config: dict) -> list[str]:
    mods = list(config.get("modalities") or [])
    if config.get("fusion") != "espresso" or "rgb" not in mods:
        return []
    return [m for m in mods if m != "rgb"]
