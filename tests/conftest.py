import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; tiny presets need none
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# The slow end-to-end tests run their CLIs against ONE Ray started for the whole session (a real
# `ray start --head`, tests/cluster.py) instead of each CLI starting a local Ray of its own (~10 s
# each): RAY_ADDRESS tells scripts/extract.py to join it. The cluster and Slurm tests bring their
# own clusters; CREMA_TEST_OWN_RAY=1 makes every test start its own local Ray as a user's run does.
OWN_RAY = {"test_cluster_e2e.py", "test_slurm.py"}


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
