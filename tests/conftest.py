import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; tiny presets need none
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch/OpenMP thread in every process the suite starts (pytest's workers, the CLIs, their Ray
# drivers; Ray's workers already get 1). Two pytest workers on 2 cores each with a 2-thread pool
# spin-wait on each other: tests/test_model_crema.py + test_train_recipe.py took 71.6 s of CPU
# (151 s wall) with 2 threads, 26.5 s (46 s) with 1, with a cluster test running beside them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

# The suite's wall-time budget (tests/budget.py): its hooks, found here by name.
from budget import (pytest_addoption, pytest_runtest_logreport, pytest_sessionfinish,  # noqa: E402,F401
                    pytest_sessionstart, pytest_terminal_summary)

# The slow end-to-end tests run their CLIs against ONE Ray started for the whole session (a real
# `ray start --head`, tests/cluster.py) instead of each CLI starting a local Ray of its own (~10 s
# each): RAY_ADDRESS tells scripts/extract.py to join it. The cluster and Slurm tests bring their
# own clusters; CREMA_TEST_OWN_RAY=1 makes every test start its own local Ray as a user's run does.
OWN_RAY = {"test_cluster_e2e.py", "test_slurm.py"}


# Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) each worker has its own session
# fixtures. The tests of a group run on ONE worker, one after the other: the demo run is built
# once, and the tests that start a Ray of their own (clusters of 4+4 logical CPUs, a Slurm job's
# Ray, a CLI's local Ray under /tmp/ray on Ray's default ports) never run at the same time. Keys
# are file names or "file::test" prefixes, matched where xdist schedules: xdist 3.8's
# `xdist_group` marks do nothing under pytest 9 (it renames item._nodeid, which pytest 9 ignores).
GROUPS = {
    "demo_run": {"test_app_browser.py", "test_predict.py", "test_train_e2e.py"},
    "own_ray": OWN_RAY | {"test_extract_e2e.py::test_kill_9_then_rerun_equals_uninterrupted_run"},
}


def xdist_group(nodeid: str) -> str | None:
    """The group of a test id (tests/x.py::test_y[p]) in GROUPS, None for a test of its own."""
    path, _, rest = nodeid.partition("::")
    here = f"{Path(path).name}::{rest}"
    return next((g for g, keys in GROUPS.items() for k in keys if here == k or here.startswith(
        k if "::" in k else k + "::")), None)


def work_unit(nodeid: str) -> str:
    """What xdist hands one worker at once: a group of GROUPS, else the test's whole file, so that
    a module fixture (a store, a cluster, four torchrun launches) is built once, not on both workers."""
    return xdist_group(nodeid) or nodeid.partition("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with GROUPS and files as units, handed out in collection order (the
    longest first, pytest_collection_modifyitems), not xdist's order by number of tests."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroupScheduling(LoadGroupScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.config.option.loadscopereorder = False  # read by schedule(): keep our order

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileGroupScheduling(config, log)


def longest_first(tests: list[tuple[str, bool]]) -> list[int]:
    """The run order of (test id, is slow) pairs, as indexes: the units of GROUPS, then files
    with end-to-end (slow) tests, then the quick files; each unit's tests together, in file
    order. The quick files come last to fill in whichever worker ends its long units first, so
    that the two workers finish together."""
    units: dict[str, list[int]] = {}
    for i, (nodeid, _) in enumerate(tests):
        units.setdefault(work_unit(nodeid), []).append(i)

    def rank(unit: str) -> int:
        if unit in GROUPS:
            return 0
        return 1 if any(tests[i][1] for i in units[unit]) else 2

    return [i for unit in sorted(units, key=rank) for i in units[unit]]  # stable within a rank


def pytest_collection_modifyitems(config, items):
    """A test file that uses the session's demo run must be in GROUPS (else xdist builds it twice);
    the longest work first (longest_first)."""
    stray = sorted({item.path.name for item in items if "demo_run" in getattr(item, "fixturenames", ())}
                   - GROUPS["demo_run"])
    if stray:
        raise pytest.UsageError(f"error: {', '.join(stray)} use(s) the demo_run fixture: add the file to "
                                "GROUPS['demo_run'] in tests/conftest.py (under xdist it would build a second demo run)")
    order = longest_first([(item.nodeid, item.get_closest_marker("slow") is not None) for item in items])
    items[:] = [items[i] for i in order]


@pytest.fixture(scope="session")
def shared_ray():
    from cluster import LocalCluster

    cluster = LocalCluster(num_cpus={"head": 2}).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", autouse=True)
def _slow_tests_join_the_shared_ray(request):
    if (request.node.get_closest_marker("slow") is None or request.node.path.name in OWN_RAY
            or os.environ.get("CREMA_TEST_OWN_RAY")):
        yield None
        return
    cluster = request.getfixturevalue("shared_ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", cluster.gcs_address)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        yield cluster


def run_cli(env: dict, script: str, *overrides: str, timeout: int = 2400):
    """A real CLI run of scripts/<script> from the repo root; AssertionError with its output on failure."""
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


DEMO_RUN_MODS = ["rgb", "flow", "audio"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, request):
    """ONE demo store and tiny checkpoint for the whole session (tests/test_train_e2e.py, the
    predict and web-app tests): 36 demo videos extracted by the real CLI, 3 epochs of training.
    One test-split video is overwritten with bytes that are no video before extraction, so the
    store holds a real decode failure (the app's Explore tab shows it; the trainer leaves its
    questions out). Returns (tmp folder, the CLI overrides, env, the broken video's id)."""
    import json

    from pipeline.demo import generate_demo

    tmp = tmp_path_factory.mktemp("demo_run")
    env = {**os.environ, "CREMA_DATA": str(tmp / "data")}
    if not os.environ.get("CREMA_TEST_OWN_RAY"):
        env.update(RAY_ADDRESS=request.getfixturevalue("shared_ray").gcs_address, RAY_AUTH_MODE="disabled")
    root = generate_demo(tmp / "data" / "demo", num_videos=36)
    broken = json.loads((root / "annotations" / "test.json").read_text())[0]["video"]
    (root / "videos" / f"{broken}.mp4").write_bytes(b"this is not a video\n" * 64)
    common = [f"out={tmp}/features", "dataset.num_videos=36", f"dataset.modalities=[{','.join(DEMO_RUN_MODS)}]"]
    run_cli(env, "scripts/extract.py", *common, "ray.num_cpus=2")
    run_cli(env, "scripts/train.py", *common, f"run_dir={tmp}/run", "trainer.epochs=3", "trainer.data.num_workers=0")
    return tmp, common, env, broken
