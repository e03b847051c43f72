"""The suite's wall-time budget (tests/budget.py): a real pytest run that takes longer than its
budget fails even though its tests pass, and says so on its last line; one within it passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def inner_run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """pytest on one passing test that takes ~1.5 s, with only the budget plugin loaded."""
    (tmp_path / "test_sleepy.py").write_text("import time\n\ndef test_sleepy():\n    time.sleep(1.5)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the installed plugins cost seconds and nothing here uses them
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "budget", "-p", "no:cacheprovider",
                           f"--rootdir={tmp_path}", "-c", os.devnull, *options, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("budget, rc, verdict", [
    ("1", 1, "error: SUITE OVER BUDGET"),
    ("300", 0, "suite budget:"),
])
def test_a_run_past_its_budget_fails_and_one_within_passes(tmp_path, budget, rc, verdict):
    proc = inner_run(tmp_path, "-o", f"suite_budget_s={budget}")
    summary = proc.stdout.strip().splitlines()[-2:]  # the verdict, then pytest's count line
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert summary[0].startswith(verdict) and "1 passed" in summary[1], summary


def test_no_budget_no_verdict_and_a_bad_value_is_one_error_line(tmp_path):
    plain = inner_run(tmp_path)
    assert plain.returncode == 0 and "budget" not in plain.stdout.lower(), plain.stdout
    bad = inner_run(tmp_path, "-o", "suite_budget_s=ten minutes")
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR
    assert "error: suite_budget_s='ten minutes' is not a number" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("nodeid, group", [
    ("tests/test_predict.py::test_predict_user_errors_name_the_video", "demo_run"),
    ("tests/test_app_browser.py::test_explore_shows_report_and_why_a_video_failed", "demo_run"),
    ("tests/test_cluster_e2e.py::test_make_submit_uses_both_nodes_loses_one_mid_run_and_matches_a_local_run", "own_ray"),
    ("tests/test_extract_e2e.py::test_kill_9_then_rerun_equals_uninterrupted_run", "own_ray"),
    ("tests/test_extract_e2e.py::test_too_many_failures_exit_nonzero", None),  # joins the session's Ray
    ("tests/test_predict_more.py::test_a", None),  # a prefix of a file name is not the file
    ("tests/test_app.py::test_backend_refuses_before_reading", None),
])
def test_xdist_groups_by_file_or_test(nodeid, group):
    from conftest import xdist_group

    assert xdist_group(nodeid) == group


def test_a_file_is_one_unit_of_work_unless_a_group_takes_its_tests():
    """A module fixture is built once: xdist hands a whole file to one worker."""
    from conftest import work_unit

    assert work_unit("tests/test_train_ddp.py::test_a_killed_two_rank_run_resumes_exactly") == "tests/test_train_ddp.py"
    assert work_unit("tests/test_train_ddp.py::test_each_step_reads[2]") == "tests/test_train_ddp.py"
    assert work_unit("tests/test_extract_e2e.py::test_kill_9_then_rerun_equals_uninterrupted_run") == "own_ray"
    assert work_unit("tests/test_extract_e2e.py::test_too_many_failures_exit_nonzero") == "tests/test_extract_e2e.py"


def test_groups_then_slow_files_then_quick_files_each_file_together():
    from conftest import longest_first

    tests = [("tests/test_a.py::test_quick", False), ("tests/test_b.py::test_unit", False),
             ("tests/test_b.py::test_e2e", True), ("tests/test_predict.py::test_x", True),
             ("tests/test_a.py::test_quick2", False), ("tests/test_b.py::test_unit2", False)]
    order = [tests[i][0] for i in longest_first(tests)]
    assert order == ["tests/test_predict.py::test_x", "tests/test_b.py::test_unit", "tests/test_b.py::test_e2e",
                     "tests/test_b.py::test_unit2", "tests/test_a.py::test_quick", "tests/test_a.py::test_quick2"]


def test_a_clusters_ports_are_outside_the_ephemeral_range_and_never_repeat(tmp_path):
    """Ray binds a cluster's ports seconds after they are picked: ports from the ephemeral range
    (any outgoing connection may take one meanwhile) made a head fail to start under load."""
    from cluster import LocalCluster

    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    seen: list[int] = []
    for nodes in ({"head": 2}, {"head": 4, "w1": 4}):
        cluster = LocalCluster(num_cpus=nodes, base=tmp_path)
        fixed = [cluster.gcs_port, cluster.dashboard_port, cluster.client_port]
        for node in cluster.nodes.values():
            fixed += [v for k, v in node.ports.items() if not k.endswith("_worker")]
            seen += range(node.ports["min_worker"], node.ports["max_worker"] + 1)
        seen += fixed
    assert max(seen) < ephemeral and len(seen) == len(set(seen))
