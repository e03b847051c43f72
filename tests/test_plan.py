"""`make plan`'s parts (pipeline/plan.py): the container probe, the sample's spread, and the cost
model, from real media and costs given by hand."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from core.features import resolve_features
from core.util import to_plain
from media import write_video
from pipeline.plan import (pack, pick_sample, predict_bytes, predict_cluster, probe_videos, shard_sizes, stage_costs,
                           stages_wall)
from core.schema import VideoEntry
from presets import CONF


def test_the_probe_reads_headers_and_names_a_broken_file(tmp_path):
    good = write_video(tmp_path / "a.mp4", frames=30, fps=10, size=(64, 48))
    bad = tmp_path / "b.mp4"
    bad.write_bytes(b"not a video" * 10)
    found = probe_videos([VideoEntry("a", str(good), "train"), VideoEntry("b", str(bad), "train")])
    assert (found["a"]["width"], found["a"]["height"]) == (64, 48)
    assert found["a"]["duration_s"] == pytest.approx(3.0, abs=0.2) and found["a"]["fps"] == pytest.approx(10)
    assert "error" in found["b"]


def test_the_sample_spreads_over_sizes():
    probes = {f"v{i:02d}": {"duration_s": float(i + 1), "width": 64, "height": 48, "fps": 10, "bytes": 1}
              for i in range(40)}
    probes["broken"] = {"error": "x"}
    sample = pick_sample(probes, 4)
    assert sample == ["v05", "v15", "v25", "v35"]  # evenly spaced quantiles: the mean is the dataset's
    assert pick_sample(probes, 100) == sorted(v for v in probes if v != "broken")


def test_pack_and_the_slowest_pool():
    assert pack([4, 3, 3, 2], 2) == 6 and pack([5], 3) == 5
    pools = {"decode": {"actors": 1, "num_gpus": 0}, "flow": {"actors": 2, "num_gpus": 0}}
    wall, neck = stages_wall({"decode": 1.0, "flow": 4.0}, pools, videos=10, shard_videos=2, cpus=8)
    assert neck == "flow" and wall == pytest.approx(4.0 * 10 / 2 + (1.0 + 4.0) * 2)
    wall, _ = stages_wall({"decode": 1.0, "flow": 4.0}, pools, videos=10, shard_videos=2, cpus=1)
    assert wall == pytest.approx(50 + 10)  # two cores' worth of actors on one CPU: the CPU bounds it


def test_store_bytes_grow_with_videos_and_shards():
    sizes = {"per_video": {"rgb": 1000.0, "depth": 500.0}, "per_shard": 4096.0, "per_store": 8192}
    assert predict_bytes(sizes, [8, 8, 4]) == 8192 + 3 * 4096 + 20 * 1500
    assert shard_sizes([VideoEntry(f"v{i}", "x", "train") for i in range(20)], 8) == [8, 8, 4]


def test_a_prediction_for_two_cores_and_for_a_gpu_cluster():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="extract", overrides=["dataset=demo"])
    features, store_cfg, plan_cfg = resolve_features(cfg.features), to_plain(cfg.store), to_plain(cfg.plan)
    costs = {n: 0.1 for n in ("decode", "depth", "flow", "normal", "encoder", "pointcloud", "audio", "writer")}
    here = predict_cluster(features, store_cfg, plan_cfg, {"CPU": 2.0}, costs=costs, fixed_s=10.0, shards=[8] * 15)
    assert here["plan"] == "fused"
    assert here["predicted_wall_s"] == pytest.approx(10.0 + 8 * 0.8 * 8)  # 15 shards of 6.4 s on 2 actors: 8 rounds
    big = predict_cluster(features, store_cfg, plan_cfg, {"CPU": 96.0, "GPU": 8.0}, costs=costs, fixed_s=10.0,
                          shards=[8] * 15)
    assert big["cluster"] == {"CPU": 96, "GPU": 8} and big["gpu_hours"] == pytest.approx(big["predicted_wall_s"] * 8 / 3600)


def test_costs_come_from_warm_shards_and_the_writer_from_the_run():
    cold = {"video_ids": ["a", "b"], "timings": {"decode": 10.0, "depth": 20.0}, "written_at": 1.0}
    warm = {"video_ids": ["c", "d"], "timings": {"decode": 2.0, "depth": 4.0}, "written_at": 2.0}
    run = {"decode": 12.0, "depth": 24.0, "write": 8.0}
    per_video, per_frame, busy = stage_costs({"s0": cold, "s1": warm}, run, frames_per_video=4, actors=1)
    assert per_video == {"decode": 1.0, "depth": 2.0, "writer": 2.0}  # the writer: 8 s over 4 videos
    assert per_frame["depth"] == 0.5 and busy == [10.0, 10.0]
    assert stage_costs({"s0": cold}, {"decode": 10.0, "depth": 20.0}, 4, actors=1)[0]["depth"] == 10.0  # all cold
