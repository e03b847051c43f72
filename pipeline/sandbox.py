"""Run a function in a child process that may crash or hang without taking its caller down.

The decode stage decodes each video through a `Sandbox`: a persistent child Python process
(`python -m pipeline.sandbox`, a clean interpreter: no fork of a multi-threaded Ray worker)
that receives (function path, arguments) and answers with the result, both pickled over pipes.
A call that does not answer within its time limit has its child killed; a child that dies
(a segfault inside a native decoder, an out-of-memory kill) is noticed by the broken pipe.
Either way the call raises `SandboxError` with the reason, and the next call starts a fresh
child. Only that one video is lost.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO

_HEADER = struct.Struct("!Q")


class SandboxError(RuntimeError):
    """The call crashed its child process or ran past its time limit; the message says which."""


def _send(stream: BinaryIO, obj: Any) -> None:
    blob = pickle.dumps(obj, protocol=5)
    stream.write(_HEADER.pack(len(blob)))
    stream.write(blob)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the child process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(stream: BinaryIO) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


def resolve(path: str):
    """`package.module:function` (or `package.module.function`) -> the function."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class Sandbox:
    """A child process that runs `function(*args)` calls one at a time, with a time limit each."""

    def __init__(self, timeout_s: float | None, preload: tuple[str, ...] = ()):
        self.timeout_s = timeout_s
        # functions whose modules the child imports as it starts, before any call: a child
        # started ahead of its first call (`start`) is then ready when the call comes
        self.preload = tuple(preload)
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return subprocess.Popen([sys.executable, "-m", "pipeline.sandbox", *self.preload], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)

    def start(self) -> None:
        """Start the child now (it imports `preload` while the caller does other work)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()

    def call(self, function: str, *args: Any) -> Any:
        self.start()
        t0 = time.monotonic()
        try:
            _send(self.proc.stdin, (function, args))
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
            if not ready:
                self.close()
                raise SandboxError(f"no result after {self.timeout_s:g} s (time limit): the child was killed")
            status, value = _recv(self.proc.stdout)
        except (EOFError, BrokenPipeError, struct.error) as exc:
            code = self.proc.wait(timeout=10)
            self.proc = None
            cause = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise SandboxError(f"the decoder's process died ({cause}) after {time.monotonic() - t0:.1f} s") from exc
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __del__(self):
        self.close()


def loaded(modules: list[str]) -> list[str]:
    """Which of `modules` this process has imported (what a child's preload did, for a check)."""
    return [m for m in modules if m in sys.modules]


def _serve(preload=()) -> None:
    """The child's loop: one (function, args) in, one ("ok", result) or ("error", exception) out.

    ``preload``: function paths resolved first (their modules imported) before waiting for a call;
    one that fails to import is left for its call to report."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a decoder's prints must not corrupt the result pipe
    for function in preload:
        try:
            resolve(function)
        except Exception:  # the call that needs it raises the same error, as a per-video failure
            pass
    while True:
        try:
            function, args = _recv(stdin)
        except EOFError:
            return
        try:
            reply = ("ok", resolve(function)(*args))
        except Exception as exc:  # returned, not raised: the parent re-raises it with its type
            reply = ("error", exc)
        try:
            _send(stdout, reply)
        except Exception as exc:  # e.g. an exception that does not pickle
            _send(stdout, ("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))


if __name__ == "__main__":
    _serve(sys.argv[1:])
