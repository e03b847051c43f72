"""Both execution plans (pipeline/graph.py) write the same store: a pool per stage, or N actors
each running the whole chain. Real CLI, real Ray, real videos, every modality, and the paper's
flow model (a tiny random-init UniMatch of the same class) in the pipeline (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from core.store import MARKER, FeatureStore
from test_extract_e2e import run_extract, store_snapshot

pytestmark = pytest.mark.slow


def test_stages_and_fused_plans_write_identical_stores(tmp_path):
    data = [f"dataset.root={tmp_path / 'demo'}", "dataset.num_videos=3", "store.shard_size=2",
            "extractor@features.extractors.flow=flow_unimatch_tiny"]
    stores = {}
    for plan in ("stages", "fused"):
        proc = run_extract(*data, f"out={tmp_path / plan}", f"plan.mode={plan}")
        assert "ray_remote_args" not in proc.stderr  # Ray Data's deprecation notice, silenced in graph._map
        root = tmp_path / plan / "demo"
        report = json.loads((root / "report.json").read_text())
        assert report["run"]["plan"] == plan and report["videos_ok"] == 3
        stores[plan] = root
    fs = FeatureStore(stores["fused"])
    assert fs.video_ids == [f"demo_{i:04d}" for i in range(3)]
    for vid in fs.video_ids:
        assert fs.has(vid, "flow") and np.isfinite(fs.get(vid, "flow")).all()
        meta = fs.meta(vid)["model_meta"]["flow"]
        assert meta["arch"] == "unimatch_sc2_ref6" and meta["model_id"] == "random-init:unimatch_sc2_ref6"
    a, b = store_snapshot(stores["stages"]), store_snapshot(stores["fused"])
    assert sorted(a) == sorted(b) and len(a) > 10
    assert [k for k in a if a[k] != b[k]] == []
    for shard in sorted(stores["stages"].glob("*/*.zarr")):
        twin = stores["fused"] / shard.parent.name / shard.name
        attrs = dict(zarr.open_group(str(shard), mode="r").attrs)
        assert attrs == dict(zarr.open_group(str(twin), mode="r").attrs)
        m1, m2 = (json.loads((s / MARKER).read_text()) for s in (shard, twin))
        assert m1["arrays"] == m2["arrays"]  # shapes, dtypes and checksums
        # the payload shrinks: the frames and rendered images leave after the encoder, and what
        # reaches the writer is exactly what it stores (every map, frame and the audio track gone)
        hops = m2["hops"]
        assert sorted(hops) == sorted(["decode", "depth", "flow", "normal", "encoder", "pointcloud", "audio"])
        assert hops["encoder"] < hops["normal"] / 2
        stored = sum(int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in m2["arrays"].values())
        assert hops["audio"] == stored
        assert m1["hops"] == hops  # the same fields travel in both plans
