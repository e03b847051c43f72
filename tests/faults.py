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
