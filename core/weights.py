"""The weights preflight: before a program does any work, look up every model it will load,
locally and offline only, and report ALL the missing ones in one short message.

The loaders (core.hub.snapshot and the stages' own) still report a model they cannot load; the
preflight exists so that a newcomer without weights learns in seconds, before Ray starts and
without hub retries, everything to download, instead of meeting one missing model per run.
The lists of what a program needs live beside the programs (extractors/weights.py for the
extraction stages, model/weights.py for the trainer's frozen parts); this module knows how to
look up one model and how to say what is missing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core.hub import ModelUnavailableError

# The venv's CLI: `hf` alone is only on PATH inside an activated venv.
HF = ".venv/bin/hf"
# What every hub model of the project loads (the loaders' allow_patterns all fall inside these).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "tokenizer*"]


class WeightsMissingError(ModelUnavailableError):
    """Models a run needs are neither cached nor local (the message lists every one)."""


@dataclass(frozen=True)
class Weights:
    """One model a run needs: where it was looked for, and how to get it."""

    user: str                      # who needs it, e.g. "extract depth stage", "train model.blip2"
    name: str                      # hub id or file name
    present: bool
    command: str                   # a shell command that downloads it to where the lookup finds it
    key: str                       # the config key that points at a local copy instead
    url: str | None = None         # a plain file's download URL (None: a hub repository)
    revision: str | None = None
    target: str | None = None      # a plain file's destination; a hub model's local folder (None: the cache)


def _has_weights(folder: Path, any_of: tuple[str, ...] = ()) -> bool:
    """config.json, safetensors weights, and (when given) at least one file matching `any_of`."""
    return ((folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
            and (not any_of or any(any(folder.glob(p)) for p in any_of)))


def hub_cached(model_id: str, revision: str | None, any_of: tuple[str, ...] = ()) -> Path | None:
    """The cached snapshot folder of `model_id` at `revision` holding a config and safetensors
    weights, or None. Reads the Hugging Face cache only: never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json", revision=revision or None)
    if not isinstance(found, str):  # None or the "known not to exist" sentinel
        return None
    folder = Path(found).parent
    return folder if _has_weights(folder, any_of) else None


def hub_command(model_id: str, revision: str | None, local_dir: str | None = None) -> str:
    """Downloads a hub model into the Hugging Face cache, where the loaders look first (or into
    `local_dir`, the folder a config's local path names)."""
    parts = [HF, "download", model_id]
    if revision:
        parts += ["--revision", revision]
    parts += ["--include", *HUB_FILES]
    if local_dir:
        parts += ["--local-dir", local_dir]
    return " ".join(shlex.quote(p) for p in parts)


def hub_weights(user: str, model_id: str, revision: str | None, local_path: str | None, *, key: str,
                any_of: tuple[str, ...] = ()) -> Weights:
    """A hub model: present when `local_path` (if set) or the cache holds config + weights (and a
    file matching `any_of`, e.g. a tokenizer's)."""
    if local_path:
        present = _has_weights(Path(local_path).expanduser(), any_of)
    else:
        present = hub_cached(model_id, revision, any_of) is not None
    return Weights(user, model_id, present, hub_command(model_id, revision, local_path), key, revision=revision,
                   target=local_path)


def file_weights(user: str, path: Path, url: str, *, key: str) -> Weights:
    """A plain checkpoint file (BEATs, torch hub checkpoints): present when `path` is a file."""
    command = f"mkdir -p {shlex.quote(str(path.parent))} && curl -L -o {shlex.quote(str(path))} {shlex.quote(url)}"
    return Weights(user, path.name, path.is_file(), command, key, url=url, target=str(path))


def missing_message(needed: Iterable[Weights], *, make_hint: str | None = None) -> str | None:
    """One short message naming every missing model with its download command (None: all present)."""
    missing = [w for w in needed if not w.present]
    if not missing:
        return None
    lines = [f"{len(missing)} model(s) this run needs are not on this machine (looked up offline: "
             f"the Hugging Face cache, local paths, checkpoint files). Download them on a machine "
             f"with network access:"]
    for w in missing:
        lines += [f"  - {w.name} ({w.user}; or set {w.key}=<local copy>):", f"      {w.command}"]
    if make_hint:
        lines.append(f"or all at once: {make_hint}")
    return "\n".join(lines)


# Overrides that choose models (passed on to `make weights` in ARGS); the rest do not matter to it.
_MODEL_KEYS = ("features.", "extractor@", "model")


def make_hint() -> str | None:
    """`make weights ...` for the running Hydra app's dataset, features and model overrides (None
    outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        choices, overrides = hydra_cfg.runtime.choices, list(hydra_cfg.overrides.task)
    except Exception:  # not inside a Hydra app (a test calling preflight directly)
        return None
    dataset, features = choices.get("dataset"), choices.get("features")
    if not (dataset and features):
        return None
    args = [o for o in overrides if o.startswith(_MODEL_KEYS) and not o.startswith("features=")]
    return f"make weights DATASET={dataset} FEATURES={features}" + (f" ARGS='{' '.join(args)}'" if args else "")


def preflight(needed: Iterable[Weights], *, make_hint: str | None = None) -> None:
    """Raise WeightsMissingError listing every missing model; return quietly when all are present."""
    message = missing_message(list(needed), make_hint=make_hint)
    if message:
        raise WeightsMissingError(message)


def download(weights: Weights) -> None:
    """Fetch one missing model to where its lookup finds it (needs network)."""
    if weights.url is None:
        from huggingface_hub import snapshot_download

        snapshot_download(weights.name, revision=weights.revision, allow_patterns=HUB_FILES, local_dir=weights.target)
        return
    import urllib.request

    target = Path(weights.target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    urllib.request.urlretrieve(weights.url, partial)
    partial.replace(target)  # never a half-written file under the name the loader reads
