"""The only folders the web app reads from: every path that comes from the browser is resolved
(symlinks and `..` followed) and refused unless it lies under one of the configured roots."""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path


class PathRefused(PermissionError):
    """A path outside the app's configured roots (or not there at all)."""


class Roots:
    """Named read roots (`app.roots` in conf/app.yaml): {name: folder}."""

    def __init__(self, roots: dict[str, str | Path]):
        self.roots = {name: Path(os.path.realpath(path)) for name, path in roots.items() if path}

    def check(self, path: str | Path) -> Path:
        """`path` resolved, if it lies under a root; PathRefused naming it and the roots otherwise."""
        if path is None or not str(path).strip():
            raise PathRefused("no path given")
        real = Path(os.path.realpath(str(path)))
        for root in self.roots.values():
            if real == root or root in real.parents:
                return real
        listed = ", ".join(f"{n}={p}" for n, p in self.roots.items())
        raise PathRefused(f"{path} is outside the app's roots ({listed}); set app.roots in conf/app.yaml to serve it")

    def _walk(self, name: str, pattern: str, want_dirs: bool) -> list[Path]:
        """Entries under root `name` whose path relative to it matches `pattern` (fnmatch, so `*`
        spans folders). Symlinks are not followed: a listing never leaves the root, nor loops."""
        root = self.roots.get(name)
        if root is None or not root.is_dir():
            return []
        found = []
        for folder, dirs, files in os.walk(root, followlinks=False):
            for entry in dirs if want_dirs else files:
                path = Path(folder) / entry
                if not path.is_symlink() and fnmatch(str(path.relative_to(root)), pattern):
                    found.append(path)
        return sorted(found)

    def files(self, name: str, pattern: str) -> list[Path]:
        """Files under root `name` matching `pattern` (e.g. `*.mp4`, `*/eval/*.json`), sorted."""
        return self._walk(name, pattern, want_dirs=False)

    def dirs(self, name: str, pattern: str) -> list[Path]:
        """Folders under root `name` matching `pattern`, sorted."""
        return self._walk(name, pattern, want_dirs=True)
