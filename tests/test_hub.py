"""Model loading: the offline error, the hub cache, and real loading of local checkpoints.

Local checkpoints are tiny random models of the real classes saved with save_pretrained, so the
code path that loads Salesforce/blip2-flan-t5-xl, Intel/zoedepth-nyu-kitti and the AST checkpoint
is the one exercised here (sub-model key mapping, processor loading, AST length adaptation).
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from presets import extractor_preset
from core.hub import ModelUnavailableError, snapshot
from core.util import pick_device
from extractors import hub
from extractors.audio import AudioExtractor
from extractors.depth import DepthExtractor, build_random
from extractors.encoder import EncoderExtractor

CONF = Path(__file__).resolve().parents[1] / "conf" / "extractor"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty hub cache, whatever the machine running the tests has."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def full_config(name: str, **overrides):
    cfg = extractor_preset(name)
    cfg.num_frames_stored = 4
    cfg.resources.device = "cpu"
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_offline_error_names_model_revision_command_and_config_key(offline):
    with pytest.raises(ModelUnavailableError) as info:
        snapshot("crema-test/not-a-model", "abc123", config_key="features.extractors.x.resources.local_path")
    msg = str(info.value)
    assert "'crema-test/not-a-model' (revision 'abc123')" in msg
    assert "hf download crema-test/not-a-model --revision abc123 --local-dir models/not-a-model" in msg
    assert "features.extractors.x.resources.local_path=models/not-a-model" in msg
    # No chained library traceback: the message is the whole story.
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("name, model_id", [("depth", "Intel/zoedepth-nyu-kitti"),
                                            ("encoder", "Salesforce/blip2-flan-t5-xl"),
                                            ("audio", "MIT/ast-finetuned-audioset-10-10-0.4593")])
def test_full_presets_fail_offline_with_the_download_command(offline, name, model_id):
    cfg = full_config(name)
    target = {"depth": DepthExtractor, "encoder": EncoderExtractor, "audio": AudioExtractor}[name]
    with pytest.raises(ModelUnavailableError) as info:
        target(cfg)
    msg = str(info.value)
    assert f"hf download {model_id} --revision {cfg.revision}" in msg
    assert f"features.extractors.{name}.resources.local_path=" in msg


def test_a_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelUnavailableError, match="nowhere"):
        snapshot("Intel/zoedepth-nyu-kitti", "main", str(missing))


def test_a_cached_snapshot_resolves_to_its_commit_without_network(offline):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--crema-test--cached"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = snapshot("crema-test/cached", "main")
    assert snap.resolved_revision == commit and snap.meta()["revision"] == "main"


def test_half_precision_falls_back_to_float32_on_cpu():
    assert hub.resolve_dtype("float16", torch.device("cpu")) == torch.float32
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def frames(n=2, h=48, w=64):
    return np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def test_encoder_loads_the_vision_tower_of_a_full_blip2_checkpoint(tmp_path):
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig,
                              BlipImageProcessor, T5Config)

    tiny = extractor_preset("encoder_tiny")
    vision = Blip2VisionConfig(**OmegaConf.to_container(tiny.random_init.model))
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 encoder_hidden_size=vision.hidden_size)
    text = T5Config(d_model=32, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, vocab_size=64)
    torch.manual_seed(0)
    full = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                                     text_config=text.to_dict(), num_query_tokens=4))
    full.save_pretrained(tmp_path)
    BlipImageProcessor(size={"height": 112, "width": 112}).save_pretrained(tmp_path)

    cfg = full_config("encoder", tokens=65, dim=64, dtype="float32", **{"resources.local_path": str(tmp_path)})
    enc = EncoderExtractor(cfg)
    got = enc.encode(frames())
    pixels = BlipImageProcessor(size={"height": 112, "width": 112})(images=list(frames()), return_tensors="pt")
    with torch.no_grad():
        vm = full.vision_model.eval()
        want = vm.encoder(inputs_embeds=vm.embeddings(pixels["pixel_values"])).last_hidden_state
    assert np.array_equal(got, want.to(torch.float16).numpy())
    assert enc.meta["source"] == str(tmp_path) and enc.meta["model_id"] == "Salesforce/blip2-flan-t5-xl"


def test_depth_loads_a_local_checkpoint_with_its_own_processor(tmp_path):
    tiny = extractor_preset("depth_tiny")
    model, processor = build_random(tiny)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    local = DepthExtractor(full_config("depth", dtype="float32", **{"resources.local_path": str(tmp_path)}))
    reference = DepthExtractor(OmegaConf.merge(tiny, {"num_frames_stored": 4}))
    assert type(local.processor) is type(reference.processor)
    assert np.array_equal(local.predict(frames()), reference.predict(frames()))


def test_audio_loads_a_longer_ast_checkpoint_and_keeps_the_centre_positions(tmp_path):
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    source = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                max_length=256))  # 12 x 25 patches, like a 1024-frame checkpoint is 12 x 101
    source.save_pretrained(tmp_path)
    cfg = full_config("audio", dtype="float32", chunk_frames=128, dim=32, **{"resources.local_path": str(tmp_path)})
    ex = AudioExtractor(cfg)
    pos = ex.model.embeddings.position_embeddings.detach()
    src = source.embeddings.position_embeddings.detach()
    src_grid, got_grid = src[0, 2:].view(12, 25, 32), pos[0, 2:].view(12, 12, 32)
    assert torch.equal(pos[0, :2], src[0, :2]) and torch.equal(got_grid, src_grid[:, 6:18])
    out = ex.encode(np.random.default_rng(0).standard_normal(32000).astype(np.float32))
    assert out.shape == (2, 2 + 12 * 12, 32) and out.dtype == np.float16
