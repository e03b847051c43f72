"""What the extraction stages of a features preset load, for the weights preflight
(core.weights): one `Weights` per learned stage that is not a random-init tiny build.

Looked up without importing the stages' libraries where that is slow (ptlflow takes ~20 s to
import here): the preflight must answer in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.weights import Weights, file_weights, hub_weights

# ptlflow's released checkpoints of the models our presets name: ptlflow's own table, read
# without importing ptlflow (unknown pairs fall back to it).
PTLFLOW_URLS = {
    ("unimatch_sc2_ref6", "mix"):
        "https://github.com/hmorimitsu/ptlflow/releases/download/weights1/unimatch_scale2_refine6-mixdata-398760b1.ckpt",
}


def torch_checkpoints() -> Path:
    """torch.hub's checkpoint folder (where ptlflow and torchvision cache weights), without torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _key(name: str) -> str:
    return f"features.extractors.{name}.resources.local_path"


def _local(cfg: dict) -> str | None:
    return (cfg.get("resources") or {}).get("local_path")


def _flow_url(cfg: dict) -> str:
    if cfg.get("backend") == "raft":
        from torchvision.models import optical_flow

        arch, weights = cfg["raft"]["arch"], cfg["raft"]["weights"]
        enum = getattr(optical_flow, {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}[arch])
        return enum[weights].url
    model, ckpt = cfg["ptlflow"]["model"], cfg["ptlflow"]["ckpt"]
    if (model, ckpt) in PTLFLOW_URLS:
        return PTLFLOW_URLS[(model, ckpt)]
    from extractors.flow import _import_ptlflow

    return _import_ptlflow().get_model_reference(model).pretrained_checkpoints[ckpt]


def _file_stage(name: str, cfg: dict, url: str, default: Path) -> Weights:
    local = _local(cfg)
    path = Path(local).expanduser() if local else default
    if local and (path.is_dir() or not path.suffix):  # a folder: the file keeps its released name
        path = path / default.name
    return file_weights(f"extract {name} stage", path, url, key=_key(name))


def stage_weights(name: str, cfg: dict) -> Weights | None:
    """The weights one stage config loads (None: a random-init build, or a stage without a model)."""
    if cfg.get("random_init"):
        return None
    if str(cfg.get("_target_", "")).endswith("BeatsExtractor"):
        from extractors.beats import BEATS_URL

        return _file_stage(name, cfg, BEATS_URL, Path("models/beats") / cfg["checkpoint_file"])
    if cfg.get("backend") in ("raft", "ptlflow"):
        url = _flow_url(cfg)
        return _file_stage(name, cfg, url, torch_checkpoints() / url.split("?")[0].rsplit("/", 1)[-1])
    if cfg.get("model_id"):
        return hub_weights(f"extract {name} stage", cfg["model_id"], cfg.get("revision"), _local(cfg), key=_key(name))
    return None


def features_weights(features: dict) -> list[Weights]:
    """Every model the stages of a resolved features preset (core.features.resolve_features) load."""
    found = (stage_weights(name, cfg) for name, cfg in features["extractors"].items())
    return [w for w in found if w is not None]
