"""What a stored video was made from: size, mtime and a content fingerprint of each source file.

The writer records it per video (group attrs and marker); a later run compares it with the file
now at the video's path and extracts a changed source again instead of calling it valid. The
fingerprint reads three 256 KiB windows (start, middle, end) plus the size, so it costs the same
on a 10 GB file as on a 1 MB one; it is compared only when size or mtime moved, so an unchanged
store costs one stat per video.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WINDOW = 256 * 1024


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        starts = [0] if size <= 3 * WINDOW else [0, size // 2 - WINDOW // 2, size - WINDOW]
        for start in starts:
            f.seek(start)
            h.update(f.read(WINDOW if len(starts) == 3 else size))
    return h.hexdigest()


def _stat(path: Path) -> tuple[int, int, str | None]:
    """(size, mtime_ns, listing digest) of a file, or of a frame folder (all its files)."""
    if not path.is_dir():
        st = path.stat()
        return st.st_size, st.st_mtime_ns, None
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(p.relative_to(path).as_posix(), p.stat()) for p in files]
    listing = "".join(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n" for name, st in stats)
    return (sum(st.st_size for _, st in stats), max((st.st_mtime_ns for _, st in stats), default=0),
            hashlib.blake2b(listing.encode(), digest_size=16).hexdigest())


def fingerprint(path: str | os.PathLike) -> dict | None:
    """{path, size, mtime_ns, fingerprint} of a source, or None when it is not there."""
    path = Path(path)
    try:
        size, mtime_ns, listing = _stat(path)
        digest = listing or _file_digest(path, size)
    except OSError:
        return None
    return {"path": str(path), "size": size, "mtime_ns": mtime_ns, "fingerprint": digest}


def video_sources(path: str, streams: dict[str, str] | None = None) -> dict:
    """The provenance of one video: its file and each sensor stream recorded beside it."""
    return {"video": fingerprint(path) if path else None,
            **({"streams": {m: fingerprint(p) for m, p in sorted(streams.items())}} if streams else {})}


def _file_changed(recorded: dict | None, path: str) -> bool:
    if not recorded or not path:
        return False  # nothing recorded (an older store): nothing to compare
    try:
        size, mtime_ns, listing = _stat(Path(path))
    except OSError:
        return False  # gone since: the stored features stay (archived sources are normal)
    if (size, mtime_ns) == (recorded["size"], recorded["mtime_ns"]) and listing is None:
        return False
    now = fingerprint(path)
    return now is None or now["fingerprint"] != recorded["fingerprint"]


def sources_changed(recorded: dict | None, path: str, streams: dict[str, str] | None = None) -> bool:
    """True when the video at ``path`` (or one of its ``streams``) is not the one ``recorded``."""
    if not recorded:
        return False
    if _file_changed(recorded.get("video"), path):
        return True
    old = recorded.get("streams") or {}
    return any(_file_changed(old.get(m), p) for m, p in (streams or {}).items())
