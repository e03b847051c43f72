"""Depth stage: monocular metric depth per stored frame, through transformers.

Default model: ZoeDepth (`Intel/zoedepth-nyu-kitti`, what CREMA used), with the model's own image
processor (reflect padding, aspect-preserving resize to a multiple of 32, normalisation) and its
`post_process_depth_estimation` (padding removed, bicubic back to the source size, optional
flip averaging as in ZoeDepth's own inference). Any other transformers depth-estimation
checkpoint with metric output works the same way (conf/extractor/depth_anything_v2.yaml).

Adds per video: maps.depth float32 [F, H, W] (metres, source size) and images.depth
uint8 [F, H, W, 3] (extractors.render.depth_to_image) for the image encoder.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from core.hub import seeded, snapshot
from core.util import to_plain
from extractors import hub, render


def build_random(cfg) -> tuple[torch.nn.Module, object]:
    """A random-init model and processor from `cfg.random_init` (tiny presets, parity tests).

    `random_init.model` holds config kwargs for `model_type` (its `backbone_config` may be a dict
    with its own model_type); `random_init.processor` holds the image processor's kwargs.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForDepthEstimation

    spec = to_plain(cfg.random_init)
    kwargs = dict(spec["model"])
    model_type = kwargs.pop("model_type")
    backbone = kwargs.pop("backbone_config", None)
    if backbone is not None:
        kwargs["backbone_config"] = AutoConfig.for_model(backbone.pop("model_type"), **backbone)
    config = AutoConfig.for_model(model_type, **kwargs)
    with seeded(cfg.seed):
        model = AutoModelForDepthEstimation.from_config(config)
    processor = getattr(transformers, spec["processor_class"])(**spec["processor"])
    return model, processor


def load_pretrained(cfg, dtype: torch.dtype, local_path: str | None) -> tuple[tuple[torch.nn.Module, object], dict]:
    """The configured hub (or local) checkpoint, its own image processor, and its model_meta."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    snap = snapshot(cfg.model_id, cfg.revision, local_path,
                        allow_patterns=["*.json", "*.safetensors"],
                        config_key="features.extractors.depth.resources.local_path")
    model = AutoModelForDepthEstimation.from_pretrained(snap.path, dtype=dtype)
    processor = AutoImageProcessor.from_pretrained(snap.path)
    return (model, processor), snap.meta()


class DepthExtractor:
    """Metric depth maps (and their renderings) for every stored frame of every video."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.dtype, self.batch_size, _ = hub.runtime(cfg)
        self.model, self.processor, meta = hub.load_model(cfg, build_random, load_pretrained)
        self.meta = {**meta, "flip_average": bool(cfg.flip_average)}
        post = inspect.signature(self.processor.post_process_depth_estimation).parameters
        # ZoeDepth's post-processing removes its reflect padding (it needs the source size) and
        # can average a flipped pass; DPT-style processors (Depth Anything) just resize.
        self._zoe_style = "source_sizes" in post
        if cfg.flip_average and "outputs_flipped" not in post:
            raise ValueError(f"flip_average=true but {type(self.processor).__name__} cannot average a flipped pass; "
                             "set flip_average=false for this model")

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """Per-video features this stage adds (none: depth only feeds maps and images)."""
        return {}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [F, H, W, 3] of one video -> float32 depth [F, H, W] in metres."""
        out = []
        for pixels, outputs, sizes in hub.dense_predictions(self.model, self.processor, frames, batch_size=self.batch_size,
                                                            device=self.device, dtype=self.dtype, key="predicted_depth"):
            if self._zoe_style:
                flipped = None
                if self.cfg.flip_average:
                    flipped = self.model(pixel_values=torch.flip(pixels, dims=[3]))
                    flipped["predicted_depth"] = flipped["predicted_depth"].float()
                results = self.processor.post_process_depth_estimation(outputs, source_sizes=sizes,
                                                                       outputs_flipped=flipped)
            else:
                results = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
            out += [r["predicted_depth"].float().cpu().numpy() for r in results]
        return np.stack(out).astype(np.float32)

    def __call__(self, batch: dict) -> dict:
        render_cfg = dict(self.cfg.get("render") or {})
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            depth = self.predict(np.asarray(video["frames"]))
            video.setdefault("maps", {})["depth"] = depth
            video.setdefault("images", {})["depth"] = render.depth_to_image(depth, **render_cfg)
            video.setdefault("model_meta", {})[self.cfg.name] = dict(self.meta)
        return batch
