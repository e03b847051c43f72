"""One writer per store: a lease file (``LOCK.json``: host, pid, run id, heartbeat counter).

An extraction run takes the lease before it touches the store (temporaries, manifest, shards)
and renews it from a background thread. The run id is the lease's generation token: a writer
(a Ray actor of that run) checks it before it swaps a shard into place, so the writers of a run
that lost the lease (killed, or stalled and taken over) can no longer change the store.

How a lease changes hands, and why:

* Every change of ``LOCK.json`` (create, renew, take over, release) and every fenced store change
  (a shard swapped into place, a manifest append) happens under an exclusive ``flock`` of the
  store's ``.LOCK.fence`` file, so a decision and the change it leads to cannot interleave with
  another run's. The file itself is created with its content (a temporary file, then ``link``),
  so a reader never sees an empty or half-written lease.
* A holder on this host is alive while its pid is (a zombie, an exiting process or a pid reused
  by another process counts as dead: ``/proc/<pid>/stat``), and its heartbeat is younger than
  ``stale_s`` (this host's clock is the holder's clock). A live holder is refused at once.
* A holder on another host is judged by its heartbeat as this run's own clock sees it: the run
  watches the heartbeat counter and takes the lease over only when it has not changed for
  ``stale_s`` seconds of its own monotonic clock; a change means the holder is alive (refused).
  The clocks of the two hosts never meet, so neither a clock behind nor one ahead misleads it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.store import LOCK, StoreError
from core.util import TMP_PREFIX, write_json_atomic

log = logging.getLogger("crema.lease")
FENCE = ".LOCK.fence"   # never deleted: a flock on a deleted inode would not exclude a new one's holder
PF_EXITING = 0x4        # include/linux/sched.h: the process is past do_exit()


class StoreBusyError(StoreError):
    """Another run holds the store's lease."""


class LeaseLostError(StoreBusyError):
    """This run no longer holds the lease: its writers must not change the store."""


# ---------------------------------------------------------------------- processes on this host


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, flags, start time in clock ticks) of ``pid`` from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[6]), int(fields[19])


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), to tell a reused pid from its holder."""
    stat = _proc_stat(pid) if Path("/proc/self/stat").exists() else None
    return stat[2] if stat else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` (started at ``started``, when known) still runs on this host.

    ``os.kill(pid, 0)`` succeeds on a zombie: a run killed with its process group stays one until
    its parent reaps it (seconds, or for as long as the parent lives), so /proc decides.
    """
    if pid <= 0:
        return False
    if not Path("/proc/self/stat").exists():  # no procfs (not Linux): the signal probe is all there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, flags, start = stat
    if state in "ZXx" or flags & PF_EXITING:
        return False
    return started is None or start == started


# ---------------------------------------------------------------------- the fence


@contextmanager
def store_fence(root: Path) -> Iterator[None]:
    """Exclusive ``flock`` of the store's fence file for the block (serialises lease changes
    and fenced writes across processes, and across threads with their own descriptors)."""
    fd = os.open(Path(root) / FENCE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_lease(root: Path) -> dict | None:
    """The lease file of the store at ``root``; None when there is none, {} when it is not ours."""
    try:
        held = json.loads((Path(root) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def check_lease(root: Path, token: str) -> None:
    """Raise LeaseLostError unless the lease of the store at ``root`` carries generation ``token``."""
    held = read_lease(root)
    if not held or held.get("token") != token:
        holder = f"run {held.get('run')} (host {held.get('host')}, pid {held.get('pid')})" if held else "nobody"
        raise LeaseLostError(f"a writer of an earlier lease generation ({token}) found {root} held by {holder}; "
                             f"it stops and leaves the store to the holder")


@contextmanager
def fenced(root: Path, token: str | None) -> Iterator[None]:
    """The block runs only while the lease carries generation ``token``, and no lease change can
    happen during it (a writer's shard swap, a manifest append). ``token=None``: unfenced."""
    if token is None:
        yield
        return
    with store_fence(root):
        check_lease(root, token)
        yield


# ---------------------------------------------------------------------- the lease


class StoreLease:
    """``with StoreLease(root): ...`` holds the store for the block (renewed every stale_s / 4)."""

    def __init__(self, root: Path, *, stale_s: float = 120.0, purpose: str = "extract", poll_s: float | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.stale_s = float(stale_s)
        self.poll_s = poll_s if poll_s is not None else min(1.0, self.stale_s / 20)
        pid = os.getpid()
        self.me = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
                   "run": uuid.uuid4().hex[:12], "token": uuid.uuid4().hex[:12], "purpose": purpose,
                   "started": time.time()}
        self.beats = 0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def run(self) -> str:
        return self.me["run"]

    @property
    def token(self) -> str:
        """The lease's generation token: what this run's writers check before changing the store."""
        return self.me["token"]

    def new_generation(self) -> str:
        """A new token: writers still holding the old one (a finished or failed pass's stragglers,
        whose Ray actors may outlive it) can no longer change the store. Returns the new token."""
        with store_fence(self.root):
            self._check_mine()
            self.me["token"] = uuid.uuid4().hex[:12]
            write_json_atomic(self.path, self._content())
        return self.token

    def _check_mine(self) -> None:
        held = self.read()
        if not held or held.get("run") != self.run:
            self.lost.set()
            raise LeaseLostError(f"lost the lease on {self.root} to another run ({held}); this run stops writing")

    def read(self) -> dict | None:
        return read_lease(self.root)

    # ------------------------------------------------------------------ judging a holder
    def _local_verdict(self, held: dict) -> str | None:
        """Why a holder on this host may be taken over (its clock is ours), or None while it lives."""
        pid = int(held.get("pid", -1))
        if not pid_alive(pid, held.get("pid_start")):
            return f"pid {pid} on this host is gone (exited, a zombie, or its pid reused)"
        age = time.time() - float(held.get("heartbeat", 0))
        if age > self.stale_s:
            return f"pid {pid} is alive but has not renewed the lease for {age:.0f} s (> {self.stale_s:g} s)"
        return None

    def _busy(self, held: dict, why: str) -> StoreBusyError:
        return StoreBusyError(
            f"{self.root} is being written by another run ({held.get('purpose', 'extract')} on host "
            f"{held.get('host')}, pid {held.get('pid')}, run {held.get('run')}; {why}). Wait for it to finish, "
            f"or write to another OUT. A lease whose heartbeat stops for {self.stale_s:g} s is taken over "
            f"automatically (store.lease_s)."
        )

    # ------------------------------------------------------------------ writing the lease file
    def _content(self) -> dict:
        return {**self.me, "beat": self.beats, "heartbeat": time.time()}

    def _create(self) -> bool:
        """Create LOCK.json with its content in one step (a temporary, then link): False if it exists."""
        tmp = self.root / f"{TMP_PREFIX}{LOCK}.{uuid.uuid4().hex[:8]}"
        try:
            write_json_atomic(tmp, self._content())
            os.link(tmp, self.path)
            return True
        except (FileExistsError, FileNotFoundError):  # taken, or our temporary swept by a cleanup: look again
            return False
        finally:
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "StoreLease":
        """Take the lease (waiting up to ``stale_s`` on a holder on another host); StoreBusyError
        naming a live holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        seen, seen_at, said = None, 0.0, False
        while True:
            with store_fence(self.root):
                held = self.read()
                if held is None:
                    if self._create():
                        break
                    continue
                sighting = json.dumps(held, sort_keys=True)
                if sighting != seen:
                    if seen is not None and held.get("host") != self.me["host"]:
                        raise self._busy(held, "its heartbeat moved while this run watched it")
                    seen, seen_at = sighting, time.monotonic()
                reason = self._verdict(held, time.monotonic() - seen_at)
                if reason:
                    log.warning("taking over the store lease of run %s (host %s, pid %s): %s", held.get("run"),
                                held.get("host"), held.get("pid"), reason)
                    write_json_atomic(self.path, self._content())
                    break
            if not said:
                log.warning("%s is held by run %s on host %s; watching its heartbeat for up to %g s (store.lease_s) "
                            "before taking it over", self.path, held.get("run"), held.get("host"), self.stale_s)
                said = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._beat, name="store-lease", daemon=True)
        self._thread.start()
        return self

    def _verdict(self, held: dict, unchanged_s: float) -> str | None:
        """Why ``held`` may be taken over now; None to keep watching; raises for a live local holder."""
        if held and held.get("host") == self.me["host"]:
            reason = self._local_verdict(held)
            if reason is None:
                age = time.time() - float(held.get("heartbeat", 0))
                raise self._busy(held, f"alive, heartbeat {age:.0f} s ago")
            return reason
        if unchanged_s > self.stale_s:
            what = "its lease file" if not held else "its heartbeat"
            return f"{what} did not change for {unchanged_s:.0f} s of this run's clock (> {self.stale_s:g} s)"
        return None

    def _beat(self) -> None:
        while not self._stop.wait(max(0.2, self.stale_s / 4)):
            try:
                with store_fence(self.root):
                    try:
                        self._check_mine()
                    except LeaseLostError as exc:
                        log.error("%s", exc)
                        return
                    self.beats += 1
                    write_json_atomic(self.path, self._content())
            except OSError as exc:  # a full or flaky disk: the next beat tries again
                log.warning("could not renew the store lease %s: %s", self.path, exc)

    def check(self) -> None:
        """Raise LeaseLostError if the lease was lost (another run took it over while this one stalled)."""
        if self.lost.is_set():
            raise LeaseLostError(f"lost the lease on {self.root} to another run; this run stops writing")

    def fenced(self):
        """A context in which this run provably holds the lease (see ``fenced``)."""
        return fenced(self.root, self.token)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with store_fence(self.root):
                held = self.read()
                if held and held.get("run") == self.run:
                    self.path.unlink(missing_ok=True)
        except OSError as exc:  # a read-only or vanished OUT: nothing to release
            log.warning("could not release the store lease %s: %s", self.path, exc)

    def __enter__(self) -> "StoreLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
