"""CREMA's released checkpoints <-> this project's checkpoints (scripts/import_ckpt.py).

    make import-ckpt SRC=crema_initial.pth DATASET=nextqa          # .pth -> outputs/imported/crema_initial/best-000000-e000
    make import-ckpt SRC=outputs/imported/nextqa_vdfn ARGS="dest=back.pth"   # a checkpoint -> the reference's .pth

Import: the file is read with torch.load(weights_only=True) (a pickle that needs more is refused),
its keys are split by model/reference_ckpt.py (mapped / ignored with a reason / refused), the
model is built from the composed preset on the meta device with the sizes the file implies, and
the mapped tensors must be EXACTLY its trainable parameters (strict). The result is an ordinary
checkpoint: `make eval ARGS="ckpt=<out>"` evaluates it, `model.init=<out>` starts training from
it. Export writes {"model": state dict} in the reference's names, which the reference's
load_checkpoint reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core.util import TMP_PREFIX, file_sha256, to_plain
from model.config import CremaConfig
from model.crema import crema
from model.reference_ckpt import (REFERENCE_NAMES, ConversionError, architecture, modality_order, to_project,
                                  to_reference, unwrap)
from trainer import checkpoint
from trainer.config import TrainerConfig

EXTRA = "reference_extra.safetensors"  # beside best-000000-e000/: what the import left, for the export


class _Weights:
    """What checkpoint.save reads from a model: its trainable tensors by name."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.tensors


def read_reference(path: Path) -> dict:
    """A reference checkpoint file, unpickled with weights_only=True."""
    if not path.is_file():
        raise ConversionError(f"no file at {path}: download it first (docs/training.md lists the hf download commands)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with arbitrary objects, a truncated download, not a torch file
        raise ConversionError(f"{path} cannot be read with torch.load(weights_only=True): {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}") from None


def model_config(cfg: DictConfig, state: dict, modalities: list[str]) -> CremaConfig:
    """The composed model preset with the modalities and sizes of the reference state dict."""
    fields = to_plain(cfg.model)
    fields.pop("_target_", None)
    fields.pop("init", None)
    fields.update(modalities=modalities, **architecture(state, modalities))
    fields.update(phrase_tokens=[], answer_tokens=False)  # answer tokens are a training run's own vocabulary
    return CremaConfig(**fields)


def import_reference(cfg: DictConfig) -> Path:
    """Convert `cfg.src` (a reference .pth) into a checkpoint under `cfg.out`; returns its directory."""
    src = Path(cfg.src)
    ckpt = read_reference(src)
    state, entries = unwrap(ckpt)
    modalities = modality_order(ckpt, state, cfg.modalities)
    config = model_config(cfg, state, modalities)
    shapes = {k: tuple(v.shape) for k, v in crema(config, device="meta").trainable_state().items()}
    conv = to_project(state, modalities, shapes)
    conv.ignored.update(entries)
    prompt = TrainerConfig.from_cfg(cfg.trainer).prompt
    source = {"file": str(src), "sha256": file_sha256(src), "modalities": "_".join(REFERENCE_NAMES[m] for m in modalities),
              **conv.summary(), "ignored_keys": conv.ignored}
    state_json = {"model_config": dataclasses.asdict(config), "prompt": dataclasses.asdict(prompt),
                  "imported_from": source}
    out = Path(cfg.dest or f"outputs/imported/{src.stem}")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.keep_ignored:
        _write_extra(out, state, conv, source["sha256"])
    else:
        (out / EXTRA).unlink(missing_ok=True)
    directory = checkpoint.save(out, "best", step=0, epoch=0, model=_Weights(conv.tensors), state=state_json)
    _print_import(src, directory, conv, modalities)
    return directory


def _write_extra(out: Path, state: dict, conv, digest: str) -> None:
    """The ignored tensors, untouched, beside the checkpoint (not in it: the model never reads
    them), with the source's key order, so that an export restores the whole state dict."""
    extra = {k: state[k].contiguous().clone() for k in conv.ignored if isinstance(state.get(k), torch.Tensor)}
    tmp = out / f"{TMP_PREFIX}{EXTRA}"
    save_file(extra, str(tmp), metadata={"order": json.dumps(list(state)), "source_sha256": digest})
    os.replace(tmp, out / EXTRA)


def _print_import(src: Path, directory: Path, conv, modalities: list[str]) -> None:
    print(f"{src}: {len(conv.tensors)} tensors mapped for modalities {modalities}; "
          f"{len(conv.ignored)} entries left:")
    for reason, count in sorted(conv.summary()["ignored"].items(), key=lambda kv: -kv[1]):
        example = next(k for k, r in conv.ignored.items() if r == reason)
        print(f"  {count:5d} x {reason} (e.g. {example})")
    print(f"checkpoint: {directory}\n  evaluate: make eval DATASET=<dataset> CKPT={directory.parent}\n"
          f"  train from it: make train DATASET=<dataset> ARGS=\"model.init={directory.parent}\"")


def export_reference(cfg: DictConfig) -> Path:
    """Write the checkpoint at `cfg.src` as a reference .pth ({"model": state dict}); returns its path."""
    directory = checkpoint.resolve(cfg.src, "best")
    tensors = load_file(str(directory / "model.safetensors"))
    ref = _with_extra(to_reference(tensors), directory)
    out = Path(cfg.dest or f"{directory.parent}.pth")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ref}, out)
    print(f"{directory}: {len(ref)} tensors -> {out} (the reference's names; load with its load_checkpoint)")
    return out


def _with_extra(ref: dict, directory: Path) -> dict:
    """`ref` plus the tensors the import left (when it kept them), in the source's key order."""
    path = directory.parent / EXTRA
    if not path.is_file():
        return ref
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    source = checkpoint.read_state(directory).get("imported_from", {})
    if meta.get("source_sha256") != source.get("sha256"):
        raise ConversionError(f"{path} belongs to another import than {directory} (source sha256 "
                              f"{meta.get('source_sha256')} vs {source.get('sha256')}): import again")
    merged = {**load_file(str(path)), **ref}
    order = [k for k in json.loads(meta["order"]) if k in merged]
    return {k: merged[k] for k in order + [k for k in merged if k not in set(order)]}


def run(cfg: DictConfig) -> Path:
    """Import a .pth file, or export a checkpoint directory (what `cfg.src` is decides)."""
    return export_reference(cfg) if Path(cfg.src).is_dir() else import_reference(cfg)
