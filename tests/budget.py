"""The test suite's wall-time budget (issue 24): `make test` fails when the whole suite takes
longer than `suite_budget_s` seconds (a pytest ini option; `make test` sets it from TEST_BUDGET_S).

A pytest plugin: tests/conftest.py imports its hooks; `pytest -p budget` with tests/ on the path
loads it alone. The limit is for an idle 2-core machine, where CI runs; on a machine busy with
other work, `make test TEST_BUDGET_S=0` runs without it. The verdict is printed just above
pytest's count line, below its list of the slowest tests (`--durations`), so a run over budget
says what to look at.
"""

from __future__ import annotations

import time

import pytest

INI = "suite_budget_s"
_START = pytest.StashKey[float]()
_WALL = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI, "fail the run when its wall time exceeds this many seconds (0: no budget)", default="0")


def pytest_sessionstart(session: pytest.Session) -> None:
    limit(session.config)  # a bad value stops the run before any test, not after all of them
    session.config.stash[_START] = time.monotonic()


def limit(config: pytest.Config) -> float:
    """The budget in seconds (0: none); a value that is no number is a usage error."""
    raw = str(config.getini(INI)).strip() or "0"
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"error: {INI}={raw!r} is not a number of seconds (make test TEST_BUDGET_S=600)")


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")  # an xdist worker's wall is not the suite's


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run that had a budget and went past it fails (exit status 1) even when every test passed."""
    _over_budget(session)


def _over_budget(session: pytest.Session) -> bool:
    config = session.config
    budget, t0 = limit(config), config.stash.get(_START, None)
    if not budget or t0 is None or not _is_controller(config):
        return False
    wall = config.stash[_WALL] = time.monotonic() - t0  # the verdict line reports this same figure
    if wall <= budget:
        return False
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return True


_LAST = pytest.StashKey[dict]()


def pytest_runtest_logreport(report) -> None:
    """When each xdist worker last reported (seconds into the run): the verdict line shows how
    long the first worker to run out of work waited for the other one."""
    node = getattr(report, "node", None)
    config = getattr(node, "config", None)
    t0 = config.stash.get(_START, None) if config is not None else None
    if t0 is not None:
        config.stash.setdefault(_LAST, {})[node.gateway.id] = time.monotonic() - t0


def workers_done(config: pytest.Config) -> str:
    """`gw0 580 s, gw1 610 s`: when each worker finished its last test ('' without xdist)."""
    last = config.stash.get(_LAST, {})
    return ", ".join(f"{w} {t:.0f} s" for w, t in sorted(last.items()))


def verdict(config: pytest.Config) -> str | None:
    """The summary's verdict line: the wall against the budget, and what to do when it is over."""
    budget, wall = limit(config), config.stash.get(_WALL, None)
    if not budget or wall is None:
        return None
    done = workers_done(config)
    done = f"; workers done at {done}" if done else ""
    if wall <= budget:
        return f"suite budget: {wall:.0f} s of {budget:.0f} s ({100 * wall / budget:.0f}%): ok{done}"
    return (f"error: SUITE OVER BUDGET: {wall:.0f} s > {budget:.0f} s (suite_budget_s; an idle 2-core machine). "
            "Make the slowest tests above cheaper (share a fixture, smaller data) or raise TEST_BUDGET_S in the "
            "Makefile and say why; on a busy machine run `make test TEST_BUDGET_S=0`.")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    line = verdict(config)
    if line:
        over = line.startswith("error:")
        terminalreporter.write_line(line, red=over, green=not over, bold=True)
