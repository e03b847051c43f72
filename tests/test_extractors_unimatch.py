"""UniMatch through ptlflow (the paper's flow model): our path equals a direct ptlflow call.

ptlflow is an optional install (`uv pip install ptlflow`, see docs/models.md), so this file is
skipped where it is absent; everything it imports besides ptlflow is the project's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ptlflow = pytest.importorskip("ptlflow")

from presets import extractor_preset
from extractors.flow import FlowExtractor, ptlflow_images  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"
pytestmark = pytest.mark.slow


def unimatch_stage() -> FlowExtractor:
    cfg = extractor_preset("flow_unimatch")
    cfg.num_frames_stored, cfg.random_init, cfg.seed, cfg.max_side = 1, True, 0, None
    cfg.resources.device = "cpu"
    return FlowExtractor(cfg)


def test_unimatch_path_equals_a_direct_ptlflow_call():
    stage = unimatch_stage()
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 255, (1, 64, 96, 3), dtype=np.uint8) for _ in range(2))  # /32 already
    ours = stage.predict(first, second)
    torch.manual_seed(0)
    model = ptlflow.get_model("unimatch_sc2_ref6").eval()
    to_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float()  # noqa: E731
    with torch.no_grad():
        want = model({"images": ptlflow_images(to_tensor(first), to_tensor(second), torch.float32)})["flows"][:, 0]
    assert ours.shape == (1, 2, 64, 96) and np.array_equal(ours, want.numpy())
    assert stage.backend.stride == 32 and stage.meta["arch"] == "unimatch_sc2_ref6"


def test_ptlflow_images_are_bgr_in_unit_range():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 255.0
    images = ptlflow_images(red, red, torch.float32)
    assert images.shape == (1, 2, 3, 2, 2) and images[0, 0, 2].eq(1).all() and images[0, 0, 0].eq(0).all()


def test_missing_checkpoint_names_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cfg = extractor_preset("flow_unimatch")
    cfg.num_frames_stored = 1
    cfg.resources.device = "cpu"
    from core.hub import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="unimatch_scale2_refine6-mixdata-398760b1.ckpt"):
        FlowExtractor(cfg)
