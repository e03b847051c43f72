"""Every extraction config composes, hashes stably, and every extractor config instantiates or names a class."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from core.features import config_hash, resolve_features, stage_order

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
EXTRACTORS = sorted(p.stem for p in (CONF / "extractor").glob("*.yaml"))


def make(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.mark.parametrize("features", ["tiny", "full"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_extract_config_composes_for_every_dataset(dataset, features):
    cfg = make("extract", [f"dataset={dataset}", f"features={features}", "dataset.path=/tmp"] if dataset == "videos"
               else [f"dataset={dataset}", f"features={features}"])
    resolved = resolve_features(cfg.features)
    assert resolved["modalities"] == list(cfg.dataset.modalities)
    for name, ext in resolved["extractors"].items():
        assert get_class(ext["_target_"]).__name__, name
    assert len(config_hash(cfg.features)) == 16


def test_hash_ignores_runtime_resources_but_not_numerics():
    base = make("extract", [])
    same = make("extract", ["features.extractors.encoder.resources.concurrency=3", "features.decode.resources.num_cpus=2"])
    other = make("extract", ["features.decode.num_frames_stored=16"])
    assert config_hash(base.features) == config_hash(same.features)
    assert config_hash(base.features) != config_hash(other.features)


def test_unneeded_extractors_neither_run_nor_enter_the_hash():
    only_rgb = make("extract", ["features.modalities=[rgb]"])
    changed_depth = make("extract", ["features.modalities=[rgb]", "features.extractors.depth.seed=123"])
    assert list(resolve_features(only_rgb.features)["extractors"]) == ["encoder"]
    assert config_hash(only_rgb.features) == config_hash(changed_depth.features)
    normal = resolve_features(make("extract", ["features.modalities=[normal]"]).features)
    assert list(normal["extractors"]) == ["depth", "normal", "encoder"]
    assert normal["extractors"]["encoder"]["modalities"] == ["rgb", "normal"]


def test_unknown_modality_is_named():
    with pytest.raises(ValueError, match="unknown modalities \\['smell'\\]"):
        resolve_features(make("extract", ["features.modalities=[rgb,smell]"]).features)


def test_preview_config_composes():
    cfg = make("preview", ["preview.video=demo_0001"])
    assert cfg.preview.video == "demo_0001" and cfg.store.shard_size >= 1


@pytest.mark.parametrize("name", EXTRACTORS)
def test_every_extractor_config_names_an_importable_class_and_resources(name):
    cfg = make(f"extractor/{name}", [])  # with its defaults: a *_tiny preset is its full one + overrides
    cfg = cfg.extractor if "extractor" in cfg else cfg
    assert get_class(cfg._target_)
    assert cfg.provides and cfg.needs is not None
    assert {"num_cpus", "concurrency"} <= set(cfg.resources)
    first = (CONF / "extractor" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("#"), "config files start with the command that uses them"


def test_stage_order_follows_needs_and_provides():
    stages = {  # listed in the wrong order on purpose
        "pointcloud": {"needs": ["maps.depth", "features.rgb"], "provides": ["features.pointcloud"]},
        "encoder": {"needs": ["frames", "images.depth"], "provides": ["features.rgb"]},
        "audio": {"needs": ["audio"], "provides": ["features.audio"]},
        "depth": {"needs": ["frames"], "provides": ["maps.depth", "images.depth"]},
    }
    assert stage_order(stages) == ["audio", "depth", "encoder", "pointcloud"]
    stages["depth"]["needs"] = ["features.pointcloud"]
    with pytest.raises(ValueError, match="cycle"):
        stage_order(stages)


def test_a_modality_whose_stage_does_not_provide_it_is_an_error():
    cfg = make("extract", ["features.modalities=[rgb,audio]", "features.extractors.audio.provides=[features.sound]"])
    with pytest.raises(ValueError, match="features.extractors.audio.provides does not list features.audio"):
        resolve_features(cfg.features)


@pytest.mark.parametrize("group, tiny, full", [("model", "crema_tiny", "crema_full"), ("trainer", "tiny", "full"),
                                               ("extractor", "depth_tiny", "depth"),
                                               ("extractor", "encoder_tiny", "encoder"),
                                               ("extractor", "audio_tiny", "audio"),
                                               ("extractor", "flow_unimatch_tiny", "flow_unimatch")])
def test_tiny_presets_are_their_full_preset_plus_overrides(group, tiny, full):
    """A key the tiny file does not set comes from the full preset (Hydra defaults inheritance)."""
    def load(name):
        cfg = make(f"{group}/{name}", {"model": ["+dataset.modalities=[rgb]"], "trainer": ["+seed=0"]}.get(group, []))
        return OmegaConf.to_container(cfg[group] if group in cfg else cfg, resolve=True)

    small, big = load(tiny), load(full)
    own = OmegaConf.load(CONF / group / f"{tiny}.yaml")
    assert "defaults" in own and full in list(own.defaults)
    inherited = [k for k in big if k not in own]
    assert inherited and all(small[k] == big[k] for k in inherited)


def test_the_full_preset_extracts_flow_with_unimatch_as_the_paper():
    flow = resolve_features(make("extract", ["dataset=nextqa", "features=full"]).features)["extractors"]["flow"]
    assert flow["backend"] == "ptlflow" and flow["ptlflow"] == {"model": "unimatch_sc2_ref6", "ckpt": "mix"}


def test_3dllm_scene_features_compose_in_both_apps_and_their_folders_stay_out_of_the_hash():
    """extract and train compose the same features node: the folders follow dataset.root in each
    app, and the hash (what the trainer checks the store against) does not depend on them."""
    swap = ["dataset=sqa3d", "extractor@features.extractors.pointcloud=pointcloud_3dllm"]
    extract = make("extract", [*swap, "dataset.root=/cluster/sqa3d"])
    train = make("train", [*swap, "dataset.root=/laptop/sqa3d"])
    scenes = resolve_features(extract.features)["extractors"]["pointcloud"]["resources"]
    assert scenes["features_dir"] == "/cluster/sqa3d/voxelized_features_sam_nonzero_preprocess"
    assert scenes["voxels_dir"] == "/cluster/sqa3d/voxelized_voxels_sam_nonzero_preprocess"
    assert resolve_features(train.features)["extractors"]["pointcloud"]["resources"]["voxels_dir"] == \
        "/laptop/sqa3d/voxelized_voxels_sam_nonzero_preprocess"
    assert config_hash(extract.features) == config_hash(train.features)
    # SQA3D's default is the same stage (conf/features/scene/); lifting from depth is another store
    assert config_hash(extract.features) == config_hash(make("extract", ["dataset=sqa3d"]).features)
    lifted = make("extract", ["dataset=sqa3d", "features.extractors.pointcloud.scene_features=null",
                              "features.extractors.pointcloud.feature_dim=${features.extractors.encoder.dim}"])
    assert config_hash(extract.features) != config_hash(lifted.features)
    other_fallback = make("extract", [*swap, "features.extractors.pointcloud.scene_features.fallback=depth"])
    assert config_hash(other_fallback.features) != config_hash(extract.features)
    # a dataset without the folders composes too (the stage then asks for them by name)
    demo = resolve_features(make("extract", ["extractor@features.extractors.pointcloud=pointcloud_3dllm"]).features)
    assert demo["extractors"]["pointcloud"]["resources"]["features_dir"] is None


@pytest.mark.parametrize("features, width, fallback", [("full", 1408, "depth"), ("tiny", 1408, "none")])
def test_sqa3d_takes_3dllm_scene_features_by_default_in_both_presets(tmp_path, features, width, fallback):
    """No extra flag: SQA3D's point clouds come from 3D-LLM's files when the dataset folder has
    them (at their 1408 width); the full preset lifts the rest from depth, the tiny one lists them;
    no folders at all is not an error. The other datasets keep the depth-lifted cloud."""
    from extractors.scene_features import SceneSource

    cfg = make("extract", ["dataset=sqa3d", f"features={features}", f"dataset.root={tmp_path}"])
    stage = resolve_features(cfg.features)["extractors"]["pointcloud"]
    assert stage["feature_dim"] == width and stage["scene_features"]["fallback"] == fallback
    assert stage["resources"]["features_dir"] == f"{tmp_path}/voxelized_features_sam_nonzero_preprocess"
    assert config_hash(cfg.features) == config_hash(make("train", ["dataset=sqa3d", f"features={features}"]).features)
    source = SceneSource.from_cfg(stage["scene_features"], width, stage["resources"])  # folders absent
    assert (source is None) == (fallback == "depth")
    if source is not None:
        assert "does not exist" in source.load({"video_id": "scene0000_00", "path": ""}, width)
    other = resolve_features(make("extract", ["dataset=demo", f"features={features}"]).features)
    assert "scene_features" not in other["extractors"]["pointcloud"]
