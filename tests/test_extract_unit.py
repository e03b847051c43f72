import logging
import pickle

import pytest

from core.hub import ModelUnavailableError
from pipeline.extract import ExtractError, _user_error, check_resources

FEATURES = {"decode": {"resources": {"num_cpus": 0.5, "concurrency": 2}},
            "extractors": {"depth": {"resources": {"num_cpus": 1, "num_gpus": 0.5, "concurrency": 2}},
                           "encoder": {"resources": {"num_cpus": 1}}}}
STORE = {"resources": {"num_cpus": 0.25}}


def test_pools_that_fit_pass():
    check_resources(FEATURES, STORE, {"CPU": 4.25, "GPU": 1.0}, local=True)


def test_pools_that_cannot_fit_locally_are_an_error_with_the_arithmetic():
    with pytest.raises(ExtractError) as err:
        check_resources(FEATURES, STORE, {"CPU": 2.0}, local=True)
    msg = str(err.value)
    assert "need 4.25 CPUs and 1 GPUs" in msg and "has 2 CPUs and 0 GPUs" in msg and "depth 2x1+0.5GPU" in msg


def test_on_a_cluster_it_only_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="crema.extract"):
        check_resources(FEATURES, STORE, {"CPU": 2.0}, local=False)
    assert "Waiting for the cluster to scale" in caplog.text


def test_model_unavailable_is_found_by_type_through_wrappers():
    """Ray keeps a task's exception as `.cause` (and Python chains with __cause__/__context__);
    the class is what matters, not the message (the end-to-end test runs it through real Ray)."""
    original = ModelUnavailableError("model 'Intel/zoedepth-nyu-kitti' is not cached.\nPre-download: hf download ...")

    class Wrapper(RuntimeError):
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError: a traceback that mentions nothing useful")
            self.cause = cause

    try:
        try:
            raise Wrapper(original)
        except Wrapper as inner:
            raise RuntimeError("the iterator failed") from inner
    except RuntimeError as outer:
        err = _user_error(outer)
    assert isinstance(err, ExtractError) and str(err) == str(original)
    assert _user_error(RuntimeError("ModelUnavailableError: only the text")) is None
    assert pickle.loads(pickle.dumps(original)).args == original.args  # it crosses process boundaries
