"""A decoder that fails the way real poison files do, injected through the config
(`+features.decode.decoder=faults:faulty_decode`): it crashes its process with SIGSEGV on a file
whose name contains "segfault", never returns on one containing "hang", and decodes the rest."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pipeline.decode import decode_video


def faulty_decode(path, cfg, start=None, end=None):
    name = Path(path).name
    if "segfault" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in name:
        while True:
            time.sleep(3600)
    return decode_video(path, cfg, start, end)


def add(a, b):
    return a + b


def fail(message):
    raise ValueError(message)


def flaky_decode(path, cfg, start=None, end=None):
    """An I/O error (EIO, as a flaky network filesystem gives) while `<video>.fail` exists beside
    the video; the error is transient, so the next run must redo the video by itself."""
    import errno

    if len(Path(path).name) < 250 and Path(f"{path}.fail").exists():  # a 255-byte name cannot have one
        raise OSError(errno.EIO, f"Input/output error (injected while {Path(path).name}.fail exists)")
    return decode_video(path, cfg, start, end)


def hold_lease(root, ready):
    """Hold a store's lease until killed (a second writer's process, for the lease tests)."""
    from pipeline.lease import StoreLease

    lease = StoreLease(Path(root), stale_s=60).acquire()
    Path(ready).write_text(str(os.getpid()))
    while not lease.lost.is_set():
        time.sleep(0.5)


SLOW_DECODE_S = 1.5
# A run that needs the config but not the wait (the local run a cluster's store is compared with)
# sets this to 0 in its environment: same config hash, same bytes, 1.5 s less per video.
SLOW_DECODE_ENV = "CREMA_TEST_SLOW_DECODE_S"


def slow_decode(path, cfg, start=None, end=None):
    """The real decoder, SLOW_DECODE_S later: stretches a small run so that a test can act while
    it is under way (tests/test_cluster_e2e.py kills a node mid-run). The output is unchanged."""
    time.sleep(float(os.environ.get(SLOW_DECODE_ENV, SLOW_DECODE_S)))
    return decode_video(path, cfg, start, end)


def remote_holder(root, ready, skew_s, period_s=0.1):
    """A live lease holder on another host whose clock is `skew_s` off this one's: renews the
    lease file of the store at `root` every `period_s` until killed."""
    from core.util import write_json_atomic

    beat = 0
    while True:
        write_json_atomic(Path(root) / "LOCK.json", {"host": "node-remote", "pid": 1, "run": "remote", "token": "r",
                                                     "beat": beat, "heartbeat": time.time() + skew_s})
        Path(ready).touch()
        beat += 1
        time.sleep(period_s)


def race_acquire(root, rounds, barrier, results):
    """One of several processes taking the lease of store `root`/r<i> at the same instant, round
    after round; puts (round, won) in `results`. A won lease is kept (its holder is alive)."""
    from pipeline.lease import StoreBusyError, StoreLease

    held = []
    for i in range(rounds):
        barrier.wait()
        try:
            held.append(StoreLease(Path(root) / f"r{i}", stale_s=600).acquire())
            results.put((i, True))
        except StoreBusyError:
            results.put((i, False))
    barrier.wait()  # every process still holds what it won until all rounds are counted


def kill_actor_once(path, cfg, start=None, end=None):
    """Kills the actor that decodes (this sandbox child's parent: as Ray's memory monitor or a
    crash would) while `<video>.killactor` exists beside the video, removing it first, so the
    rerun decodes the video normally."""
    flag = Path(f"{path}.killactor")
    if flag.exists():
        flag.unlink()
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)  # the actor is gone; its pipe closes this child
    return decode_video(path, cfg, start, end)
