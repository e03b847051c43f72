"""What a full-size CREMA loads, for the weights preflight (core.weights): BLIP-2's Q-Former side
(model.blip2) and the LLM with its tokenizer (model.t5_model). A random-init preset loads nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.weights import Weights, hub_weights

TOKENIZER_FILES = ("spiece.model", "tokenizer.json")


def _split(source: str) -> tuple[str, str | None]:
    """(hub id, local folder): a model key holds either (model/pretrained.py decides the same way)."""
    local = source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()
    return source, (source if local else None)


def crema_weights(model: Any, *, user: str = "train") -> list[Weights]:
    """Every model a CREMA config (conf/model/*.yaml, or a checkpoint's model_config) loads."""
    if not model.get("pretrained"):
        return []
    blip2, blip2_local = _split(str(model["blip2"]))
    t5, t5_local = _split(str(model["t5_model"]))
    tokenizer = TOKENIZER_FILES if model.get("tokenizer", "pretrained") == "pretrained" else ()
    return [
        hub_weights(f"{user} model.blip2: the Q-Former side", blip2, model.get("blip2_revision"), blip2_local,
                    key="model.blip2"),
        hub_weights(f"{user} model.t5_model: the LLM" + (" and its tokenizer" if tokenizer else ""), t5,
                    model.get("t5_revision"), t5_local, key="model.t5_model", any_of=tokenizer),
    ]
