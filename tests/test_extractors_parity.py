"""Our stages equal the libraries they wrap, on the same weights (tiny, seeded, random).

- depth: transformers' own depth-estimation pipeline (ZoeDepth and Depth Anything processors);
- RAFT: a direct torchvision call.
(UniMatch vs a direct ptlflow call lives in test_extractors_unimatch.py: ptlflow is optional.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from presets import extractor_preset
from extractors.depth import DepthExtractor
from extractors.flow import FlowExtractor

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"

DEPTH_ANYTHING_TINY = {
    "processor_class": "DPTImageProcessor",
    "processor": {"size": {"height": 56, "width": 56}, "keep_aspect_ratio": True, "ensure_multiple_of": 14,
                  "do_pad": False, "resample": 3},
    "model": {"model_type": "depth_anything", "depth_estimation_type": "metric", "max_depth": 20,
              "patch_size": 14, "reassemble_hidden_size": 32, "neck_hidden_sizes": [8, 16, 32, 64],
              "fusion_hidden_size": 16, "head_hidden_size": 8, "initializer_range": 0.1,
              "backbone_config": {"model_type": "dinov2", "image_size": 56, "patch_size": 14, "hidden_size": 32,
                                  "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
                                  "reshape_hidden_states": False,
                                  "out_features": ["stage1", "stage2", "stage3", "stage4"]}},
}


def depth_stage(kind: str) -> DepthExtractor:
    cfg = extractor_preset("depth_tiny")
    cfg.num_frames_stored, cfg.flip_average, cfg.resources.batch_size = 2, False, 1
    if kind == "depth_anything":
        cfg.random_init = DEPTH_ANYTHING_TINY
    return DepthExtractor(cfg)


def frames(n=2, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["zoedepth", "depth_anything"])
def test_depth_stage_equals_the_transformers_depth_pipeline(kind):
    from transformers import pipeline

    stage = depth_stage(kind)
    pipe = pipeline("depth-estimation", model=stage.model, image_processor=stage.processor, device="cpu")
    images = frames()
    ours = stage.predict(images)
    for image, got in zip(images, ours):
        want = pipe(Image.fromarray(image))["predicted_depth"].float().numpy()
        assert got.shape == want.shape == image.shape[:2]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ours.std() > 0.01  # a constant map would make this comparison vacuous


def test_zoedepth_flip_average_follows_the_documented_transformers_recipe():
    # transformers' ZoeDepth docs: run the model on the flipped pixel values too and hand both
    # outputs to post_process_depth_estimation(outputs_flipped=...).
    stage = depth_stage("zoedepth")
    stage.cfg.flip_average = True
    images = frames(1)
    ours = stage.predict(images)
    pixels = stage.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out, flipped = stage.model(pixel_values=pixels), stage.model(pixel_values=torch.flip(pixels, dims=[3]))
    want = stage.processor.post_process_depth_estimation(out, source_sizes=[images.shape[1:3]],
                                                         outputs_flipped=flipped)[0]["predicted_depth"]
    np.testing.assert_allclose(ours[0], want.numpy(), rtol=1e-5, atol=1e-5)
    stage.cfg.flip_average = False
    assert not np.allclose(stage.predict(images), ours)


def raft_stage(**overrides) -> FlowExtractor:
    cfg = extractor_preset("flow_raft")
    cfg.num_frames_stored = 2
    cfg.random_init, cfg.seed, cfg.max_side = True, 0, None
    cfg.raft.arch, cfg.raft.num_flow_updates = "raft_small", 6
    cfg.resources.device = "cpu"
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return FlowExtractor(cfg)


@pytest.mark.slow
def test_raft_path_equals_a_direct_torchvision_call():
    from torchvision.models.optical_flow import raft_small

    stage = raft_stage()
    first, second = frames(2, 128, 136, 1), frames(2, 128, 136, 2)  # RAFT needs >= 128 px, /8
    ours = stage.predict(first, second)
    torch.manual_seed(0)
    model = raft_small(weights=None).eval()
    to_input = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # noqa: E731
    with torch.no_grad():
        want = model(to_input(first), to_input(second), num_flow_updates=6)[-1].numpy()
    assert ours.shape == (2, 2, 128, 136) and np.array_equal(ours, want)
    assert stage.meta["model_id"] == "random-init:RAFT" and stage.meta["arch"] == "raft_small"


@pytest.mark.slow
def test_learned_flow_handles_odd_and_small_sizes_at_the_source_size():
    first, second = frames(1, 130, 150, 1), frames(1, 130, 150, 2)
    assert raft_stage().predict(first, second).shape == (1, 2, 130, 150)  # padded to /8, cropped back
    tiny = raft_stage().predict(frames(1, 50, 70, 1), frames(1, 50, 70, 2))  # upsized to RAFT's minimum
    assert tiny.shape == (1, 2, 50, 70) and np.isfinite(tiny).all()


def test_raft_weights_offline_name_the_url_and_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    for var in ("https_proxy", "HTTPS_PROXY"):  # no network, on any machine: a proxy that refuses
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cfg = extractor_preset("flow_raft")
    cfg.num_frames_stored = 2
    cfg.resources.device = "cpu"
    from core.hub import ModelUnavailableError

    with pytest.raises(ModelUnavailableError) as info:
        FlowExtractor(cfg)
    msg = str(info.value)
    assert "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth" in msg
    assert "features.extractors.flow.resources.local_path=" in msg and info.value.__cause__ is None



TIPS_TINY = {
    "processor_class": "Tipsv2DptImageProcessor",
    "processor": {"size": {"height": 56, "width": 56}},
    "model": {"model_type": "tipsv2_dpt", "neck_hidden_sizes": [8, 16, 32, 64], "fusion_hidden_size": 16,
              "backbone_config": {"model_type": "tipsv2_vision_model", "hidden_size": 32, "num_hidden_layers": 4,
                                  "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
                                  "out_indices": [1, 2, 3, 4], "apply_layernorm": True,
                                  "reshape_hidden_states": False}},
}


def learned_normals(axes=(1, 1, 1)):
    from extractors.normal import NormalExtractor

    cfg = extractor_preset("normal_learned")
    cfg.num_frames_stored, cfg.seed, cfg.random_init, cfg.axes = 2, 0, TIPS_TINY, list(axes)
    cfg.resources.device = "cpu"
    return NormalExtractor(cfg)


def test_learned_normals_follow_the_documented_transformers_recipe():
    stage = learned_normals()
    video = {"video_id": "v", "failed": None, "errors": [], "frames": frames(), "maps": {}, "images": {},
             "features": {}, "model_meta": {}}
    out = stage({"videos": [video]})["videos"][0]
    ours = out["maps"]["normal"]
    model, processor = stage.learned.model, stage.learned.processor
    with torch.no_grad():
        raw = model(**processor(images=list(frames()), return_tensors="pt"))
    want = [torch.nn.functional.normalize(r["normals"], dim=0).numpy()  # + our re-normalisation after resizing
            for r in processor.post_process_normal_estimation(raw, target_sizes=[(48, 64)] * 2)]
    np.testing.assert_allclose(ours, np.stack(want), rtol=1e-6, atol=1e-6)
    assert ours.shape == (2, 3, 48, 64) and np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    assert out["images"]["normal"].shape == (2, 48, 64, 3) and out["model_meta"]["normal"]["axes"] == [1, 1, 1]
    flipped = learned_normals(axes=(1, -1, -1)).learned(frames())
    np.testing.assert_allclose(flipped, ours * np.array([1, -1, -1])[None, :, None, None], atol=1e-6)
