"""`resources: auto`: the full preset's actor pools fit the cluster a run finds (0, 1 or many
GPUs; few or many CPUs), numbers given explicitly win, and the pools always pass the placement
check that would otherwise refuse the run."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from core.features import resolve_features
from core.util import to_plain
from pipeline.extract import check_resources
from pipeline.resources import fit_resources, stage_nodes
from presets import CONF


def full(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=["dataset=nextqa", "features=full", *overrides])
    return resolve_features(cfg.features), to_plain(cfg.store)


def pools(features, store_cfg):
    return {n: (float(r["num_cpus"]), float(r.get("num_gpus") or 0), int(r["concurrency"]))
            for n, r in stage_nodes(features, store_cfg).items()}


GPU_STAGES = {"depth", "flow", "encoder", "audio"}


@pytest.mark.parametrize("have", [{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0},
                                  {"CPU": 64.0, "GPU": 8.0}, {"CPU": 1.0}])
def test_the_full_preset_fits_every_machine(have):
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    fitted, fitted_store, notes = fit_resources(features, store_cfg, have)
    check_resources(fitted, fitted_store, have, local=True)  # raises when the pools cannot all be placed
    p = pools(fitted, fitted_store)
    gpu_stages = {n for n, (_, g, _) in p.items() if g}
    assert gpu_stages == (GPU_STAGES if have.get("GPU") else set())
    if not have.get("GPU"):
        assert any("no GPU" in n and "CPU" in n for n in notes)
    assert sum(g * k for _, g, k in p.values()) <= have.get("GPU", 0) + 1e-9
    assert sum(c * k for c, _, k in p.values()) <= have["CPU"] + 1e-9


def test_one_gpu_is_shared_and_spare_cpus_become_decoders():
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    p = pools(*fit_resources(features, store_cfg, {"CPU": 16.0, "GPU": 1.0})[:2])
    assert {n: p[n][1:] for n in GPU_STAGES} == {n: (0.25, 1) for n in GPU_STAGES}  # a quarter GPU each
    assert p["decode"][2] > 1 and p["decode"][0] == 1.0  # the CPUs left over: more decoders first
    assert p["writer"] == (0.25, 0.0, 1)  # a number in the config stays as it is


def test_many_gpus_give_whole_gpus_and_more_actors():
    features, store_cfg = full("features.modalities=[rgb,depth,flow,audio]")
    p = pools(*fit_resources(features, store_cfg, {"CPU": 64.0, "GPU": 8.0})[:2])
    assert {n: p[n][1:] for n in GPU_STAGES} == {n: (1.0, 2) for n in GPU_STAGES}


def test_explicit_numbers_win():
    features, store_cfg = full("features.modalities=[rgb,depth]", "features.extractors.depth.resources.num_gpus=0.5",
                               "features.extractors.depth.resources.concurrency=2",
                               "features.decode.resources.num_cpus=3")
    p = pools(*fit_resources(features, store_cfg, {"CPU": 16.0, "GPU": 1.0})[:2])
    assert p["depth"][1:] == (0.5, 2) and p["decode"][0] == 3.0 and p["decode"][2] == 1
    assert p["encoder"][1] == 1.0  # the only automatic GPU stage left gets the whole GPU


def test_the_tiny_preset_keeps_its_numbers():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=[])
    features, store_cfg = resolve_features(cfg.features), to_plain(cfg.store)
    p = pools(*fit_resources(features, store_cfg, {"CPU": 2.0, "GPU": 1.0})[:2])
    assert all(c == 0.25 and g == 0 and k == 1 for c, g, k in p.values()), p
