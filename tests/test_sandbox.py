"""The decoder's sandbox: a real child process that a segfault or a hang cannot take down with it."""

from __future__ import annotations

import pytest

from pipeline.sandbox import Sandbox, SandboxError


def test_results_and_errors_come_back_with_their_types():
    box = Sandbox(timeout_s=60)
    assert box.call("faults:add", 2, 3) == 5
    with pytest.raises(ValueError, match="bad row"):
        box.call("faults:fail", "bad row")
    assert box.call("faults:add", "a", "b") == "ab"  # the same child keeps serving
    box.close()


def test_a_segfault_costs_one_call_and_the_next_call_gets_a_fresh_child(tmp_path):
    box = Sandbox(timeout_s=60)
    first = box.call("faults:add", 1, 1) and box.proc.pid
    with pytest.raises(SandboxError, match="SIGSEGV"):
        box.call("faults:faulty_decode", str(tmp_path / "x_segfault.mp4"), None)
    assert box.call("faults:add", 1, 2) == 3 and box.proc.pid != first
    box.close()


def test_a_hang_is_killed_at_the_time_limit(tmp_path):
    box = Sandbox(timeout_s=2)
    with pytest.raises(SandboxError, match="time limit"):
        box.call("faults:faulty_decode", str(tmp_path / "x_hang.mp4"), None)
    assert box.proc is None and box.call("faults:add", 2, 2) == 4
    box.close()
