"""UniMatch through ptlflow (the paper's flow model, a locked dependency): our path equals a
direct ptlflow call, the tiny preset is the same class, a missing checkpoint names its URL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extractors.flow import FlowExtractor, _import_ptlflow, ptlflow_images
from presets import extractor_preset

ptlflow = _import_ptlflow()


def unimatch_stage() -> FlowExtractor:
    cfg = extractor_preset("flow_unimatch")
    cfg.num_frames_stored, cfg.random_init, cfg.seed, cfg.max_side = 2, True, 0, None
    cfg.resources.device = "cpu"
    return FlowExtractor(cfg)


def test_unimatch_path_equals_a_direct_ptlflow_call():
    stage = unimatch_stage()
    rng = np.random.default_rng(0)
    # two pairs in one batch (frames come from numpy channels-last); 64 x 96 is /32 already
    first, second = (rng.integers(0, 255, (2, 64, 96, 3), dtype=np.uint8) for _ in range(2))
    ours = stage.predict(first, second)
    torch.manual_seed(0)
    model = ptlflow.get_model("unimatch_sc2_ref6").eval()
    to_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float().contiguous()  # noqa: E731
    with torch.no_grad():
        want = model({"images": ptlflow_images(to_tensor(first), to_tensor(second), torch.float32)})["flows"][:, 0]
    assert ours.shape == (2, 2, 64, 96) and np.array_equal(ours, want.numpy())
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


def test_tiny_preset_is_the_same_class_smaller_and_seeded():
    cfg = extractor_preset("flow_unimatch_tiny")
    cfg.num_frames_stored = 1
    stage = FlowExtractor(cfg)
    full = ptlflow.get_model_reference("unimatch_sc2_ref6")
    model = stage.backend.model
    assert type(model) is full and model.num_transformer_layers == 1 and model.num_reg_refine == 1
    assert stage.meta["model_id"] == "random-init:unimatch_sc2_ref6" and stage.meta["seed"] == 0
    again = FlowExtractor(cfg).backend.model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())  # every process: same weights
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 255, (2, 40, 56, 3), dtype=np.uint8) for _ in range(2))  # padded to /32
    flow = stage.predict(first, second)
    assert flow.shape == (2, 2, 40, 56) and flow.dtype == np.float32 and np.isfinite(flow).all()
