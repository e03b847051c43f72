"""`resources: auto`: the full preset's actor pools fit the cluster a run finds (0, 1 or many
GPUs; few or many CPUs), numbers given explicitly win, and the pools always pass the placement
check that would otherwise refuse the run."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from core.features import resolve_features
from core.util import to_plain
from pipeline.extract import ExtractError, check_fused, check_resources
from pipeline.resources import choose_plan, fit_fused, fit_resources, measured_costs, stage_nodes
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


# --------------------------------------------------------------------------- which plan


def tiny(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=["dataset=demo", *overrides])
    return resolve_features(cfg.features), to_plain(cfg.store), to_plain(cfg.plan)


@pytest.mark.parametrize("have, expected", [
    ({"CPU": 2.0}, "fused"),                # 8 stage pools on 2 cores: they would only share them
    ({"CPU": 16.0, "GPU": 1.0}, "fused"),   # one GPU for depth, flow, the encoder and audio
    ({"CPU": 64.0, "GPU": 8.0}, "stages"),  # a cluster: every stage gets its own CPUs and GPUs
    ({"CPU": 16.0}, "stages"),
])
def test_auto_plan_fuses_where_the_pools_would_share(have, expected):
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    plan, why = choose_plan("auto", features, store_cfg, have)
    assert plan == expected, why
    assert choose_plan("stages", features, store_cfg, have)[0] == "stages"  # a given plan is kept
    with pytest.raises(ValueError, match="plan.mode"):
        choose_plan("fast", features, store_cfg, have)


def test_the_tiny_preset_on_two_cores_is_fused_with_one_actor_per_core():
    features, store_cfg, plan_cfg = tiny()
    assert choose_plan(plan_cfg["mode"], features, store_cfg, {"CPU": 2.0})[0] == "fused"
    res = fit_fused(plan_cfg["fused"], features, {"CPU": 2.0}, shards=17)
    assert (res["concurrency"], res["num_cpus"], res["num_gpus"]) == (2, 1.0, 0.0)
    assert fit_fused(plan_cfg["fused"], features, {"CPU": 2.0}, shards=1)["concurrency"] == 1  # never idle actors
    # a second actor only for a second pair of shards: its start costs more than one short shard's work
    assert fit_fused(plan_cfg["fused"], features, {"CPU": 2.0}, shards=3)["concurrency"] == 1
    assert fit_fused(plan_cfg["fused"], features, {"CPU": 2.0}, shards=4)["concurrency"] == 2
    assert fit_fused({**plan_cfg["fused"], "concurrency": 2}, features, {"CPU": 2.0}, shards=2)["concurrency"] == 2
    # fewer CPUs than one: the one actor takes what there is
    assert fit_fused(plan_cfg["fused"], features, {"CPU": 0.5}, shards=4)["num_cpus"] == 0.5


def test_fused_actors_share_one_gpu_and_split_the_cpus():
    features, _store = full("features.modalities=[rgb,depth,flow,audio]")
    res = fit_fused({"actors_per_gpu": 2}, features, {"CPU": 16.0, "GPU": 1.0}, shards=100)
    assert (res["concurrency"], res["num_gpus"], res["num_cpus"]) == (2, 0.5, 8.0)
    res = fit_fused({"concurrency": 3, "num_cpus": 2}, features, {"CPU": 16.0, "GPU": 4.0}, shards=100)
    assert (res["concurrency"], res["num_cpus"], res["num_gpus"]) == (3, 2.0, 1.0)  # numbers win, GPUs whole
    check_fused(res, {"CPU": 16.0, "GPU": 4.0}, local=True)
    with pytest.raises(ExtractError, match="plan.fused"):
        check_fused({**res, "num_cpus": 8.0}, {"CPU": 16.0, "GPU": 4.0}, local=True)


def test_a_stage_gpu_number_under_the_fused_plan_is_named_not_dropped_silently(caplog):
    """issue 27: `num_gpus=0.5` on a stage was ignored without a word under the fused plan."""
    features, _store = full("features.modalities=[rgb,depth]", "features.extractors.depth.resources.num_gpus=0.5")
    with caplog.at_level("WARNING", logger="crema.resources"):
        res = fit_fused({"actors_per_gpu": 2}, features, {"CPU": 4.0, "GPU": 1.0}, shards=10)
    assert "features.extractors.depth.resources.num_gpus=0.5" in caplog.text and "plan.mode=stages" in caplog.text
    assert f"plan.fused.num_gpus={res['num_gpus']:g}" in caplog.text
    caplog.clear()
    fit_fused({"actors_per_gpu": 2}, full("features.modalities=[rgb,depth]")[0], {"CPU": 4.0, "GPU": 1.0}, shards=10)
    assert caplog.text == ""  # autos (and the 0 of CPU-only stages) say nothing


# --------------------------------------------------------------------------- a payload that shrinks


def test_fields_leave_the_payload_after_their_last_reader():
    import numpy as np

    from pipeline.graph import drop_plan, payload_nbytes, shrink

    features, _store, _plan = tiny()
    ext = features["extractors"]
    assert list(ext) == ["depth", "flow", "normal", "encoder", "pointcloud", "audio"]
    drops = drop_plan(ext, raw_maps=False)

    def video():
        f = np.zeros((2, 4, 4, 3), np.uint8)
        return {"frames": f, "next_frames": f.copy(), "audio": np.zeros(100, np.float32),
                "maps": {"depth": np.zeros((2, 4, 4), np.float32), "flow": np.zeros((2, 2, 4, 4), np.float32)},
                "images": {"depth": f.copy(), "thermal": f.copy()}, "features": {"rgb": np.zeros((2, 3), np.float16)}}

    left = {}
    for stage in ["decode", *ext]:
        payload = {"videos": [video()]}
        shrink(payload, drops[stage])
        v = payload["videos"][0]
        left[stage] = sorted([k for k in ("frames", "next_frames", "audio") if k in v]
                             + [f"{g}.{k}" for g in ("maps", "images") for k in v[g]])
    assert "next_frames" in left["depth"] and "next_frames" not in left["flow"]  # flow was its last reader
    assert "frames" in left["normal"] and "frames" not in left["encoder"]
    assert "images.thermal" in left["normal"] and not any(k.startswith("images.") for k in left["encoder"])
    assert "maps.depth" in left["encoder"] and "maps.depth" not in left["pointcloud"]
    assert "maps.flow" not in left["decode"]  # nothing after decode reads the flow map but its own stage writes it
    assert left["audio"] == []
    # stored raw maps reach the writer
    keep = drop_plan(ext, raw_maps=True)
    payload = {"videos": [video()]}
    shrink(payload, keep["audio"])
    assert sorted(payload["videos"][0]["maps"]) == ["depth", "flow"] and "frames" not in payload["videos"][0]
    assert payload_nbytes(payload) == (2 * 16 + 2 * 2 * 16) * 4 + 2 * 3 * 2
    # an extractor the table does not know reads everything: nothing leaves before it
    unknown = drop_plan({"depth": ext["depth"], "mine": {"_target_": "my.Extractor"}}, raw_maps=False)
    payload = {"videos": [video()]}
    shrink(payload, unknown["depth"])
    assert "next_frames" in payload["videos"][0] and "thermal" in payload["videos"][0]["images"]


# Pools sized by measured throughput (plan.json's seconds per video of one actor, per stage).
COSTS = {"decode": 0.5, "depth": 2.0, "flow": 8.0, "normal": 0.5, "encoder": 4.0, "pointcloud": 0.5,
         "audio": 1.0, "writer": 0.5}
CLUSTERS = [{"CPU": 2.0}, {"CPU": 16.0}, {"CPU": 16.0, "GPU": 1.0}, {"CPU": 96.0, "GPU": 8.0},
            {"CPU": 64.0, "GPU": 3.0}, {"CPU": 1.0}]


@pytest.mark.parametrize("have", CLUSTERS)
def test_measured_pools_fit_the_cluster_and_keep_every_stage(have):
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    fitted, fitted_store, notes = fit_resources(features, store_cfg, have, costs=COSTS)
    check_resources(fitted, fitted_store, have, local=True)
    p = pools(fitted, fitted_store)
    assert all(k >= 1 for _, _, k in p.values())
    assert sum(g * k for _, g, k in p.values()) <= have.get("GPU", 0) + 1e-9
    assert sum(c * k for c, _, k in p.values()) <= have["CPU"] + 1e-9
    assert any("measured throughput" in n for n in notes)


def test_the_costliest_stage_gets_the_most_actors_in_proportion():
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    equal = pools(*fit_resources(features, store_cfg, {"CPU": 16.0})[:2])
    p = pools(*fit_resources(features, store_cfg, {"CPU": 16.0}, costs=COSTS)[:2])
    assert sum(k for *_, k in p.values()) == sum(k for *_, k in equal.values()) == 16  # the same CPUs, redistributed
    # 8 : 4 : 2 s/video, one actor each at least: 16 actors fall as 6 : 3 : 2 (each pool 1-1.3 s per video)
    assert (p["flow"][2], p["encoder"][2], p["depth"][2], p["audio"][2]) == (6, 3, 2, 1)
    assert max(COSTS[n] / p[n][2] for n in p) < max(COSTS[n] / equal[n][2] for n in equal)  # the slowest pool is faster


def test_eight_gpus_go_whole_to_the_costly_model_stages():
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    p = pools(*fit_resources(features, store_cfg, {"CPU": 96.0, "GPU": 8.0}, costs=COSTS)[:2])
    gpu = {n: (g, k) for n, (_, g, k) in p.items() if g}
    assert set(gpu) == GPU_STAGES and all(g == 1.0 for g, _ in gpu.values())
    assert sum(k for _, k in gpu.values()) == 8 and gpu["flow"][1] > gpu["encoder"][1] > gpu["audio"][1]


def test_one_shared_gpu_gives_the_costly_stage_more_slices():
    features, store_cfg = full("features.modalities=[rgb,depth,flow,normal,pointcloud,audio]")
    p = pools(*fit_resources(features, store_cfg, {"CPU": 16.0, "GPU": 1.0}, costs=COSTS)[:2])
    assert p["flow"][2] > p["depth"][2] and p["flow"][1] < 0.25  # more actors, each a thinner slice
    assert sum(g * k for _, g, k in p.values()) <= 1.0 + 1e-9


def test_the_tiny_preset_grows_only_the_pools_it_leaves_auto():
    features, store_cfg, _ = tiny()
    costs = {**{n: 1.0 for n in stage_nodes(features, store_cfg)}, "depth": 4.0}
    # 11 CPUs, one actor each: decode and writer 1 (fixed), 9 for the six extractors -> depth 4, the others 1
    p = pools(*fit_resources(features, store_cfg, {"CPU": 11.0}, costs=costs)[:2])
    assert p["decode"][2] == p["writer"][2] == 1  # the preset fixes their concurrency
    assert p["depth"][2] == 4 * p["flow"][2] and p["depth"][0] == 0.25


def test_a_measured_plan_applies_only_to_its_features_and_cluster():
    plan = {"config_hash": "abc", "clusters": [{"cluster": {"CPU": 2, "GPU": 0}}, {"cluster": {"CPU": 96, "GPU": 8}}],
            "stage_seconds_per_video": {"decode": 1, "depth": 4}}
    assert measured_costs(plan, "abc", {"CPU": 96.0, "GPU": 8.0})[0] == {"decode": 1.0, "depth": 4.0}
    assert measured_costs(plan, "abc", {"CPU": 2.0})[0] is not None
    costs, why = measured_costs(plan, "abd", {"CPU": 2.0})
    assert costs is None and "abc" in why and "abd" in why
    costs, why = measured_costs(plan, "abc", {"CPU": 8.0})
    assert costs is None and "equal shares" in why
    assert measured_costs(None, "abc", {"CPU": 8.0})[0] is None
