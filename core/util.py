"""Small helpers both programs use: config containers, atomic writes, the device picker, and
finding a typed error inside the wrappers Ray puts around it."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"  # every temporary this project writes starts with it (a re-run deletes leftovers)


def to_plain(node: Any) -> Any:
    """A resolved plain-Python copy of an OmegaConf node (dicts, lists and scalars pass through)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entry to disk (a directory: the renames inside it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a part:
    a temporary beside it, flushed and fsynced, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 1, sort_keys: bool = True,
                      newline: bool = False) -> Path:
    """`obj` as JSON through `write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + ("\n" if newline else ""))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 16 MiB blocks (a model file's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_device(name: str | None = "auto"):
    """`auto` (or nothing) -> the first CUDA device when there is one, else the CPU."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def find_error(exc: BaseException, cls: type[BaseException], where=None) -> BaseException | None:
    """The first exception of type `cls` in `exc`'s chain, looking through Ray's wrappers
    (a RayTaskError or ActorDiedError keeps the original in `.cause`), `__cause__` and
    `__context__`; None when there is none. `where` (a predicate) narrows the match. The error
    classes this is used with are plain picklable exceptions, so they cross process boundaries intact."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, cls) and (where is None or where(err)):  # Ray's RayTaskError(cls): the original reads better
            inner = getattr(err, "cause", None)
            return inner if isinstance(inner, cls) and (where is None or where(inner)) else err
        stack += [getattr(err, "cause", None), err.__cause__, err.__context__]
    return None
