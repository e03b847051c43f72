"""weights=random: the full presets' models at their real size with seeded random weights, nothing
downloaded; the store records it and the trainer refuses to mix it with real features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core import random_weights
from core.features import modality_hashes, modality_views
from core.store import StoreError
from extractors import audio, beats, depth, encoder
from pipeline.store import init_store

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def app(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=["features=full", *overrides])


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_learned_stage_of_the_full_preset_becomes_full_size_random():
    cfg = random_weights.apply(app("extract", "weights=random", "dataset.modalities=[rgb,depth,flow,normal,audio]"))
    stages = cfg.features.extractors
    assert {n for n, s in stages.items() if s.get("weights") == "random"} == {"depth", "flow", "encoder", "audio"}
    assert stages.normal.get("random_init") is None and stages.pointcloud.get("random_init") is None  # no model
    assert stages.flow.random_init is True  # ptlflow's registered UniMatch, as it is
    with torch.device("meta"):  # the real sizes (no memory): ViT-g 986 M, ZoeD-NK, BEATs
        vit, _ = encoder.build_random(stages.encoder)
        zoe, _ = depth.build_random(stages.depth)
        beat = beats.build_random(stages.audio)
    assert (vit.config.hidden_size, (vit.config.image_size // vit.config.patch_size) ** 2 + 1) == (1408, 257)
    assert count(vit) == 985_952_256 and count(zoe) == 334_560_859 and count(beat) > 90e6
    assert len(zoe.config.bin_configurations) == 2
    # The hash (and so the store) differs from a real run's, per modality.
    real = app("extract", "dataset.modalities=[rgb,depth,flow,normal,audio]")
    ours, theirs = modality_hashes(cfg.features), modality_hashes(real.features)
    assert all(ours[m] != theirs[m] for m in ours)


def test_ast_and_the_trainer_models_follow_the_switch():
    cfg = random_weights.apply(app("train", "weights=random", "extractor@features.extractors.audio=audio"))
    assert cfg.model.pretrained is False and cfg.model.tokenizer == "byt5" and cfg.features.extractors.audio.random_init == {"model": {}}
    with torch.device("meta"):
        ast = audio.build_random(cfg.features.extractors.audio)
    assert ast.config.hidden_size == 768 and ast.config.num_hidden_layers == 12
    assert random_weights.apply(app("train")).model.pretrained is True  # pretrained: untouched


def test_a_model_without_a_full_size_architecture_is_named():
    cfg = app("extract", "weights=random", "extractor@features.extractors.depth=depth_anything_v2")
    with pytest.raises(ValueError, match=r"features.extractors.depth \('.*'\).*conf/weights/random.yaml"):
        random_weights.apply(cfg)


def _store(root: Path, cfg) -> Path:
    feats = cfg.features
    init_store(root, dataset="demo", hashes=modality_hashes(feats, ["rgb"]), features=modality_views(feats, ["rgb"]))
    return root


def test_the_store_records_it_and_the_trainer_refuses_to_mix(tmp_path):
    rand = random_weights.apply(app("train", "weights=random"))
    real = app("train")
    random_store, real_store = _store(tmp_path / "r", rand), _store(tmp_path / "p", real)
    recorded = OmegaConf.to_container(OmegaConf.load(next(random_store.glob("*.json"))))
    assert "random" in str(recorded["modalities"]["rgb"]["features"])
    random_weights.check_store_weights(random_store, rand, ["rgb"])  # the same kind: fine
    random_weights.check_store_weights(real_store, real, ["rgb"])
    with pytest.raises(StoreError, match=r"'rgb' features made with weights=random \(stages \['encoder'\]"):
        random_weights.check_store_weights(random_store, real, ["rgb"])
    with pytest.raises(StoreError, match="made with real weights; weights=random would mix"):
        random_weights.check_store_weights(real_store, rand, ["rgb"])

