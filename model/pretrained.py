"""Loading the full-size frozen parts: BLIP-2 (Q-Former, query tokens, language projection, the
vision post-LayerNorm) and Flan-T5, by hub id + pinned revision or from a local folder.

Nothing here runs for the tiny preset. With no network and no local copy the error names the id,
the revision, the command that pre-downloads it and the config key that takes a local path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from core.hub import ModelUnavailableError, snapshot

log = logging.getLogger(__name__)

BLIP2_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]
T5_FILES = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
            "tokenizer*", "spiece.model", "special_tokens_map.json"]
BLIP2_PREFIXES = ("qformer.", "query_tokens", "language_projection.", "vision_model.post_layernorm.")


def resolve(source: str, revision: str, *, config_key: str, patterns: list[str]) -> Path:
    """A local folder holding `source` (a hub id, or a local folder given in its place).

    Goes through core.hub.snapshot (cache first, then the hub, one clear error) so every model in
    the project is found and reported the same way.
    """
    local = source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()
    return snapshot(None if local else source, revision, source if local else None,
                    allow_patterns=patterns, config_key=config_key).path


def read_tensors(root: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors whose names start with one of `prefixes`, from a (sharded) safetensors folder."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefixes)})
    else:
        files = [p.name for p in sorted(root.glob("*.safetensors"))]
    if not files:
        raise ModelUnavailableError(f"{root} has no safetensors weights with keys {list(prefixes)}")
    out = {}
    for name in files:
        with safe_open(str(root / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    out[key] = f.get_tensor(key)
    return out


def load_blip2(source: str, revision: str):
    """(Blip2QFormerModel with BLIP-2's weights, dict of initial values for the MMQA heads)."""
    from transformers import Blip2Config, Blip2QFormerModel

    root = resolve(source, revision, config_key="model.blip2", patterns=BLIP2_FILES)
    config = Blip2Config.from_pretrained(root)
    qformer = Blip2QFormerModel(config.qformer_config)
    tensors = read_tensors(root, BLIP2_PREFIXES)
    state = {k[len("qformer."):]: v for k, v in tensors.items() if k.startswith("qformer.")}
    result = qformer.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ModelUnavailableError(
            f"{root}: the BLIP-2 checkpoint lacks Q-Former weights {result.missing_keys[:5]} "
            f"({len(result.missing_keys)} missing). Is model.blip2 a BLIP-2 checkpoint?"
        )
    if result.unexpected_keys:
        log.info("BLIP-2 Q-Former weights not used (text side): %d keys", len(result.unexpected_keys))
    init = {
        "query_tokens": tensors["query_tokens"],
        "ln.weight": tensors["vision_model.post_layernorm.weight"],
        "ln.bias": tensors["vision_model.post_layernorm.bias"],
        "proj.weight": tensors["language_projection.weight"],
        "proj.bias": tensors["language_projection.bias"],
    }
    return qformer, init


def load_t5(source: str, revision: str, dtype: torch.dtype):
    """(T5ForConditionalGeneration, its tokenizer) from the hub or a local folder."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    root = resolve(source, revision, config_key="model.t5_model", patterns=T5_FILES)
    llm = T5ForConditionalGeneration.from_pretrained(root, dtype=dtype)
    return llm, AutoTokenizer.from_pretrained(root)
