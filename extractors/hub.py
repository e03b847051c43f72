"""How a stage gets its model: a seeded random-init build (tiny presets) or the real weights
(found through core.hub.snapshot), on the stage's device and dtype, with the provenance that goes
into the store's model_meta. Every learned stage loads through `build_or_load` / `load_model`;
`dense_predictions` runs a transformers dense-prediction model (depth, normals) over frames.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import torch

from core.util import pick_device

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for a model. Half precisions are a GPU setting: on the CPU they run
    slowly or not at all (several kernels are missing), so the CPU falls back to float32 and
    says so; model_meta records the dtype actually used."""
    dtype = _DTYPES[name or "float32"]
    if device.type == "cpu" and dtype != torch.float32:
        log.warning("dtype %s requested on the CPU: computing in float32 instead", name)
        return torch.float32
    return dtype


def random_init_meta(cls: type, cfg: Any) -> dict:
    """model_meta of a tiny random-init preset (no hub id, no revision: the seed is the identity)."""
    return {"model_id": f"random-init:{cls.__name__}", "revision": None, "resolved_revision": None,
            "seed": int(cfg.seed), "source": "random-init"}


def runtime(cfg: Any) -> tuple[torch.device, torch.dtype, int, str | None]:
    """device, dtype, batch size and local_path of a stage config (all but dtype are runtime-only
    knobs under `resources`, which the store's config hash ignores)."""
    res = cfg.get("resources") or {}
    device = pick_device(res.get("device", "auto"))
    dtype = resolve_dtype(cfg.get("dtype", "float32"), device)
    return device, dtype, int(res.get("batch_size", 8)), res.get("local_path")


def build_or_load(cfg: Any, build_random: Callable, load_pretrained: Callable) -> tuple[Any, dict]:
    """(built, provenance): `build_random(cfg)` for a tiny preset (`random_init` set), else
    `load_pretrained(cfg, dtype, local_path)`, which returns (built, meta). `built` is whatever the
    stage's builders make: a model, or (model, processor). The one place where random-vs-pretrained
    is decided."""
    _, dtype, _, local_path = runtime(cfg)
    if cfg.get("random_init"):
        built = build_random(cfg)
        model = built[0] if isinstance(built, tuple) else built
        return built, random_init_meta(type(model), cfg)
    return load_pretrained(cfg, dtype, local_path)


def load_model(cfg: Any, build_random: Callable, load_pretrained: Callable) -> tuple[torch.nn.Module, Any, dict]:
    """A stage's (model, processor) on its device in eval mode, and the provenance for model_meta
    (`build_or_load` with builders that make (model, processor))."""
    device, dtype, _, _ = runtime(cfg)
    (model, processor), meta = build_or_load(cfg, build_random, load_pretrained)
    model = model.to(device, dtype).eval()
    return model, processor, {**meta, "architecture": type(model).__name__,
                              "dtype": str(dtype).removeprefix("torch.")}


def dense_predictions(model, processor, frames, *, batch_size: int, device: torch.device, dtype: torch.dtype,
                      key: str) -> Iterator[tuple[torch.Tensor, Any, list[tuple[int, int]]]]:
    """(pixel_values, outputs with `key` in float32, the source sizes) for each batch of uint8 RGB
    `frames` [F, H, W, 3], through the model's own image processor; the caller post-processes."""
    height, width = frames.shape[1:3]
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start:start + batch_size])
        pixels = processor(images=chunk, return_tensors="pt")["pixel_values"].to(device, dtype)
        outputs = model(pixel_values=pixels)
        outputs[key] = outputs[key].float()
        yield pixels, outputs, [(height, width)] * len(chunk)
