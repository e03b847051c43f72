"""Run-level errors of `extract` and the exit codes they map to (scripts/extract.py).

| exit | meaning |
|---|---|
| 0 | done (failed videos, if any, are within `max_failed_fraction` and listed) |
| 1 | too many videos failed, or some were not written: run the same command again / see failures.jsonl |
| 2 | a problem with the request: config, dataset, weights, a store busy or made with another config |
| 3 | the storage refused a write: disk full, read-only, no permission, a name too long |

A storage error is one ``error:`` line naming the path and what to do, after the summary of what
the store holds; the run removes its temporaries first. Whatever was finished stays valid, so the
same command resumes once the storage is fixed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

EXIT_FAILURES, EXIT_USER, EXIT_STORAGE = 1, 2, 3

# errno -> what the user can do about it
_ADVICE = {
    errno.ENOSPC: "no space left on the device; free space there or write to another OUT",
    errno.EDQUOT: "the disk quota is exhausted; free space there or write to another OUT",
    errno.EFBIG: "a file grew past the size limit (ulimit -f or the filesystem's); raise it or write to another OUT",
    errno.EROFS: "the filesystem is read-only; remount it read-write or write to another OUT",
    errno.EACCES: "permission denied; fix the folder's permissions or write to another OUT",
    errno.EPERM: "operation not permitted; fix the folder's permissions or write to another OUT",
    errno.ENAMETOOLONG: "a file name is too long for this filesystem; shorten OUT (or the dataset's folder names)",
}


class ExtractError(RuntimeError):
    """A run-level problem the user can fix (e.g. model weights unavailable); the message says how."""


class StorageError(ExtractError):
    """The store's filesystem refused a write (exit code 3)."""


class WriteRefused(RuntimeError):
    """A writer's OSError from the storage, carried across Ray with its errno and path intact
    (Ray hands an OSError raised in an actor to the driver with its errno and message only)."""

    def __init__(self, message: str, code: int = 0, path: str = ""):
        super().__init__(message, code, path)
        self.code, self.path = code, path


def is_storage(exc: BaseException) -> bool:
    """An OSError by which the storage refuses a write (full, read-only, permission, name length)."""
    return isinstance(exc, OSError) and exc.errno in _ADVICE



def _chain(exc: BaseException):
    """``exc`` and every exception inside it (Ray's ``cause``, ``__cause__``, ``__context__``)."""
    seen, stack = set(), [exc]
    while stack:
        err = stack.pop()
        if isinstance(err, BaseException) and id(err) not in seen:
            seen.add(id(err))
            yield err
            stack += [getattr(err, "cause", None), err.__cause__, err.__context__]


def _storage_oserror(exc: BaseException) -> tuple[int, object] | None:
    """(errno, path) of the storage's refusal in ``exc``: a writer's WriteRefused, else an
    OSError raised here (Ray's copies of an actor's OSError have lost the path)."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, WriteRefused) and e.code in _ADVICE:
            return e.code, e.path
    found = [e for e in chain if is_storage(e)]
    found = next((e for e in found if type(e).__module__ == "builtins"), found[0] if found else None)
    return (found.errno, found.filename) if found is not None else None


def storage_error(exc: BaseException, root: Path) -> StorageError | None:
    """The StorageError for ``exc`` (or an OSError inside Ray's wrappers of it), None when it is
    not a refusal of the storage under ``root``."""
    found = _storage_oserror(exc)
    if found is None:
        return None
    code, path = found
    path = path if isinstance(path, (str, os.PathLike)) and str(path).startswith("/") else root
    free = ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {shutil.disk_usage(root).free / 2**20:.1f} MiB free"
        except OSError:
            pass
    return StorageError(f"cannot write {path} ({os.strerror(code)}{free}): {_ADVICE[code]}, then run "
                        f"the same command again to resume (finished shards are kept)")


class _KnownErrorFilter(logging.Filter):
    """Drops Ray Data's logged tracebacks of errors the run reports itself in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not (_storage_oserror(exc) or any(type(e).__name__ == "LeaseLostError"
                                                                for e in _chain(exc)))


def quiet_known_errors() -> None:
    """Ray Data logs a failed task's traceback (twice) before the driver sees the error; for a
    storage refusal or a lost lease the run's own `error:` line says it all (Ray's log files keep them)."""
    for name in ("ray.data", "ray"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _KnownErrorFilter) for f in handler.filters):
                handler.addFilter(_KnownErrorFilter())
