"""The model presets as the apps see them: composed from conf/model/*.yaml by Hydra, then built."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.util import to_plain
from model.crema import build_crema
from trainer.config import TrainerConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def preset(name: str, *overrides: str) -> dict:
    """The keys of conf/model/<name>.yaml (after its defaults), minus `_target_`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}", *overrides])
    fields = to_plain(cfg.model)
    fields.pop("_target_")
    return fields


def build(name: str, *, device=None, **fields):
    """A model of preset `name` with `fields` overriding its keys (e.g. vision_width, modalities)."""
    return build_crema(**{**preset(name), **fields}, device=device)


def trainer_preset(name: str, *overrides: str) -> TrainerConfig:
    """conf/trainer/<name>.yaml (after its defaults), typed."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"trainer={name}", *overrides])
    return TrainerConfig.from_cfg(cfg.trainer)


def extractor_preset(name: str):
    """conf/extractor/<name>.yaml after its defaults (a *_tiny preset is its full one + overrides),
    as a mutable DictConfig, unresolved (pointcloud's feature_dim points at its neighbour)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=f"extractor/{name}")
    node = cfg.extractor
    OmegaConf.set_struct(node, False)
    return node
