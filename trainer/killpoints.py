"""Named points at which a test makes the training process SIGKILL itself (never set in real runs).

`CREMA_TEST_KILL_AT=last:renamed@2` kills the process the 2nd time it passes the point
`last:renamed` (a checkpoint protocol step, see trainer/checkpoint.py) or `metrics:torn` (half a
metrics row written). The kill tests use it to hit every step of the save protocol exactly; a
real SIGKILL, so nothing (no finally, no atexit) runs after it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "CREMA_TEST_KILL_AT"
_passed: Counter = Counter()


def reached(point: str) -> None:
    """Count one pass of `point`; SIGKILL this process when the environment asks for this pass."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    _passed[point] += 1
    name, _, nth = wanted.partition("@")
    if name == point and _passed[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
