"""One writer per store: a lease file (``LOCK.json``: host, pid, run id, heartbeat).

An extraction run takes the lease before it touches the store (temporaries, manifest, shards)
and renews it from a background thread. A second run on the same store is refused with the
holder named. A lease whose holder is gone (same host and its pid is dead) or whose heartbeat is
older than ``stale_s`` (a node that crashed) is taken over. Takeovers are serialised by an
exclusive-create guard file, so two runs cannot both take over the same stale lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from core.store import LOCK, StoreError
from core.util import write_json_atomic

log = logging.getLogger("crema.lease")
GUARD = ".LOCK.takeover"


class StoreBusyError(StoreError):
    """Another run holds the store's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLease:
    """``with StoreLease(root): ...`` holds the store for the block (renewed every stale_s / 4)."""

    def __init__(self, root: Path, *, stale_s: float = 120.0, purpose: str = "extract"):
        self.path = Path(root) / LOCK
        self.stale_s = float(stale_s)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex[:12], "purpose": purpose,
                   "started": time.time()}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state of a lease file
    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # a torn or foreign file: treated as stale below

    def stale_reason(self, held: dict) -> str | None:
        """Why ``held`` may be taken over, or None while its holder is alive."""
        if not held:
            return "unreadable lease file"
        age = time.time() - float(held.get("heartbeat", 0))
        if held.get("host") == self.me["host"] and not _pid_alive(int(held.get("pid", -1))):
            return f"pid {held.get('pid')} on this host is gone"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (> {self.stale_s:g} s)"
        return None

    def _write(self) -> None:
        write_json_atomic(self.path, {**self.me, "heartbeat": time.time()})

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({**self.me, "heartbeat": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "StoreLease":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if self._create():
                break
            held = self.read()
            if held is None:
                continue  # released in between: try to create again
            reason = self.stale_reason(held)
            if reason is None:
                age = time.time() - float(held.get("heartbeat", 0))
                raise StoreBusyError(
                    f"{self.path.parent} is being written by another run ({held.get('purpose', 'extract')} on host "
                    f"{held.get('host')}, pid {held.get('pid')}, run {held.get('run')}, heartbeat {age:.0f} s ago). "
                    f"Wait for it to finish, or write to another OUT. A lease without a heartbeat for "
                    f"{self.stale_s:g} s is taken over automatically (store.lease_s)."
                )
            if self._take_over(held, reason):
                break
        else:
            raise StoreBusyError(f"could not take the lease {self.path} (it kept changing hands)")
        self._thread = threading.Thread(target=self._beat, name="store-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, held: dict, reason: str) -> bool:
        guard = self.path.with_name(GUARD)
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another run is taking over; a guard left by a dead taker expires
            try:
                if time.time() - guard.stat().st_mtime > 30:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.2)
            return False
        os.close(fd)
        try:
            if self.read() != held:  # it changed hands while we looked
                return False
            log.warning("taking over the store lease of run %s (host %s, pid %s): %s", held.get("run"),
                        held.get("host"), held.get("pid"), reason)
            self._write()
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(max(0.5, self.stale_s / 4)):
            held = self.read()
            if not held or held.get("run") != self.me["run"]:
                log.error("the store lease %s was taken by another run (%s); stopping", self.path, held)
                self.lost.set()
                return
            try:
                self._write()
            except OSError as exc:  # a full or flaky disk: the next beat tries again
                log.warning("could not renew the store lease %s: %s", self.path, exc)

    def check(self) -> None:
        """Raise if the lease was lost (another run took it over while this one stalled)."""
        if self.lost.is_set():
            raise StoreBusyError(f"lost the lease on {self.path.parent} to another run; this run stops writing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.read()
        if held and held.get("run") == self.me["run"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StoreLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
