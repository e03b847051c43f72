"""Finding model weights by hub id + pinned revision or a local copy: one path for every model
in the project (the extractors' stages and the trainer's frozen BLIP-2 / Flan-T5).

Every model is found through `snapshot()` so that
- a cached or local copy is used without touching the network,
- the commit actually loaded is recorded (`Snapshot.meta()` goes into the store's model_meta),
- a machine without network and without a copy gets one short error that names the model, the
  revision, the exact download command and the config key to point at a local copy, instead of
  a stack trace from deep inside huggingface_hub.

Tiny presets never come here: they build random-init configs of the same classes (`seeded()`).
`ModelUnavailableError` is a plain picklable exception: raised inside a Ray actor it reaches the
driver intact (core.util.find_error finds it inside Ray's wrappers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ModelUnavailableError(RuntimeError):
    """The weights of a configured model are neither cached, nor local, nor downloadable."""


@dataclass(frozen=True)
class Snapshot:
    """A local directory holding one revision of a model repository."""

    path: Path
    model_id: str | None
    revision: str | None
    resolved_revision: str | None  # the commit hash actually loaded (None for a plain local dir)

    def meta(self) -> dict:
        return {"model_id": self.model_id, "revision": self.revision,
                "resolved_revision": self.resolved_revision, "source": str(self.path)}


def download_command(model_id: str, revision: str | None, local_dir: str | None = None,
                     include: list[str] | None = None) -> str:
    """The shell command that pre-downloads a model (run it on a machine with network)."""
    local_dir = local_dir or f"models/{model_id.split('/')[-1]}"
    parts = [".venv/bin/hf", "download", model_id]  # the venv's CLI: a bare `hf` is on PATH only inside it
    if revision:
        parts += ["--revision", revision]
    if include:
        parts += ["--include", *[f'"{p}"' for p in include]]
    parts += ["--local-dir", local_dir]
    return " ".join(parts)


def _unavailable(model_id: str | None, revision: str | None, what: str, *, config_key: str,
                 include: list[str] | None, local_path: str | None = None) -> ModelUnavailableError:
    target = local_path or f"models/{(model_id or 'model').split('/')[-1]}"
    cmd = download_command(model_id, revision, target, include) if model_id else None
    lines = [f"model {model_id!r} (revision {revision!r}) is not available: {what}."]
    if cmd:
        lines += [
            "Pre-download it on a machine with network access:",
            f"    {cmd}",
            "(huggingface_hub < 1.0: the same arguments after `huggingface-cli download`.)",
        ]
    lines += [
        "Then copy the folder here and point the config at it, e.g.",
        f"    {config_key}={target}",
        "or set HF_HOME to a cache that already holds it.",
    ]
    return ModelUnavailableError("\n".join(lines))


def snapshot(model_id: str | None, revision: str | None = None, local_path: str | None = None, *,
             allow_patterns: list[str] | None = None, config_key: str = "resources.local_path") -> Snapshot:
    """Find (or download) one revision of a model and return where it lies on disk.

    `local_path` wins when set (it must exist). Otherwise the hub cache is tried first, with no
    network, then the hub itself. `allow_patterns` limits what is downloaded (e.g. only the
    shards a sub-model needs). `config_key` is the override named in the error message.
    """
    if local_path:
        path = Path(local_path).expanduser()
        if not (path / "config.json").is_file():
            raise _unavailable(model_id, revision, f"local_path {str(path)!r} holds no config.json",
                               config_key=config_key, include=allow_patterns, local_path=str(path)) from None
        return Snapshot(path, model_id, revision, None)
    if not model_id:
        raise ValueError("a model needs either model_id (hub) or resources.local_path")

    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id, revision=revision, allow_patterns=allow_patterns, local_files_only=True)
    except Exception:  # not cached (any flavour): fall through to the network
        try:
            path = snapshot_download(model_id, revision=revision, allow_patterns=allow_patterns)
        except Exception as exc:  # offline, unknown repo or revision, gated, HTTP error...
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise _unavailable(model_id, revision, f"not in the local cache and the hub said "
                               f"{type(exc).__name__}: {first}", config_key=config_key,
                               include=allow_patterns) from None
    path = Path(path)
    # The cache lays snapshots out as .../snapshots/<commit>/: that commit is what was loaded.
    resolved = path.name if path.parent.name == "snapshots" else None
    return Snapshot(path, model_id, revision, resolved)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random-init a tiny model identically in every process: fork the global RNG, seed it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield
