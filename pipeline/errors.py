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
import os
import shutil
from pathlib import Path

from core.util import find_error

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


def _is_storage(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _ADVICE


def storage_error(exc: BaseException, root: Path) -> StorageError | None:
    """The StorageError for ``exc`` (or an OSError inside Ray's wrappers of it), None when it is
    not a refusal of the storage under ``root``."""
    found = find_error(exc, OSError, where=_is_storage)
    if found is None:
        return None
    path = found.filename or root
    free = ""
    if found.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f", {shutil.disk_usage(root).free / 2**20:.1f} MiB free"
        except OSError:
            pass
    return StorageError(f"cannot write {path} ({os.strerror(found.errno)}{free}): {_ADVICE[found.errno]}, then run "
                        f"the same command again to resume (finished shards are kept)")
