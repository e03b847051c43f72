"""Frozen image-encoder stage: BLIP-2's ViT-g tokens for rgb and every rendered modality.

CREMA encodes RGB, depth, flow and normal frames with the SAME frozen EVA-CLIP ViT-g that BLIP-2
ships. Here: transformers' Blip2VisionModel, loaded from the vision part of
`Salesforce/blip2-flan-t5-xl` (its own BlipImageProcessor: 224 px bicubic resize of the whole
frame, OpenAI-CLIP mean/std), output 257 tokens x 1408 per frame.

What is stored is the encoder output BEFORE `post_layernorm` (= LAVIS's ViT output before
`ln_vision`): the trainer owns one LayerNorm per modality initialised from BLIP-2's
post_layernorm, so normalising here would apply it twice.

Adds features[m] float16 [F, tokens, dim] for m in cfg.modalities (rgb from video["frames"],
the others from video["images"][m] when an earlier stage produced them).
Token 0 is the class token; tokens 1.. are the patch grid in row-major order over the resized
frame (the point-cloud stage relies on this layout to lift patch features onto pixels).
"""

from __future__ import annotations

import numpy as np
import torch

from core.hub import seeded, snapshot
from core.util import to_plain
from extractors import hub


def build_random(cfg) -> tuple[torch.nn.Module, object]:
    """Random-init Blip2VisionModel + BlipImageProcessor from `cfg.random_init` (tiny presets)."""
    from transformers import Blip2VisionConfig, Blip2VisionModel, BlipImageProcessor

    spec = to_plain(cfg.random_init)
    config = Blip2VisionConfig(**spec["model"])
    with seeded(cfg.seed):
        model = Blip2VisionModel(config)
    size = config.image_size
    processor = BlipImageProcessor(size={"height": size, "width": size}, **spec.get("processor", {}))
    return model, processor


def load_pretrained(cfg, dtype: torch.dtype, local_path: str | None) -> tuple[tuple[torch.nn.Module, object], dict]:
    """The vision tower of a full BLIP-2 checkpoint (hub or local), without its Q-Former and LLM.

    A Blip2ForConditionalGeneration checkpoint keeps the vision weights under `vision_model.`,
    which key_mapping strips (a plain Blip2VisionModel checkpoint has no prefix and loads as it
    is); the rest is ignored.
    """
    from transformers import Blip2VisionModel, BlipImageProcessor

    snap = snapshot(cfg.model_id, cfg.revision, local_path, allow_patterns=["*.json", "*.safetensors"],
                        config_key="features.extractors.encoder.resources.local_path")
    model = Blip2VisionModel.from_pretrained(snap.path, dtype=dtype, key_mapping={r"^vision_model\.": ""})
    processor = BlipImageProcessor.from_pretrained(snap.path)
    return (model, processor), snap.meta()


class EncoderExtractor:
    """Encodes every image-like modality of a video with one frozen Blip2VisionModel."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device, self.dtype, self.batch_size, _ = hub.runtime(cfg)
        self.model, self.processor, meta = hub.load_model(cfg, build_random, load_pretrained)
        model = self.model
        self.modalities = list(cfg.modalities)
        spec = self.spec_for(cfg)["rgb"][0][1:]
        got = (self.tokens_of(model.config), model.config.hidden_size)
        if tuple(spec) != got:
            raise ValueError(f"encoder config says tokens x dim = {tuple(spec)} but the loaded model gives {got}; "
                             "fix `tokens`/`dim` in the encoder config")
        self.meta = {**meta, "output": "encoder.last_hidden_state (before post_layernorm)",
                     "image_size": int(model.config.image_size), "patch_size": int(model.config.patch_size)}

    @staticmethod
    def tokens_of(config) -> int:
        return (config.image_size // config.patch_size) ** 2 + 1

    @classmethod
    def spec_for(cls, cfg) -> dict:
        """features[m]: (F, tokens, dim) float16 for every encoded modality (rgb always first)."""
        shape = (int(cfg.num_frames_stored), int(cfg.tokens), int(cfg.dim))
        return {m: (shape, "float16") for m in dict.fromkeys(["rgb", *cfg.modalities])}

    def output_spec(self) -> dict:
        return self.spec_for(self.cfg)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float16 [N, tokens, dim], the encoder output before post_layernorm."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            hidden = self.model.embeddings(pixels)
            hidden = self.model.encoder(inputs_embeds=hidden).last_hidden_state
            out.append(hidden.to(torch.float16).cpu().numpy())
        return np.concatenate(out)

    def __call__(self, batch: dict) -> dict:
        for video in batch["videos"]:
            if video.get("failed"):
                continue
            sources = {"rgb": video.get("frames")}
            sources.update({m: img for m, img in (video.get("images") or {}).items() if m != "rgb"})
            wanted = [m for m in dict.fromkeys(["rgb", *self.modalities]) if sources.get(m) is not None]
            if not wanted:
                continue
            # One pass over each size of a video's images: same-size frames batch together (a
            # sensor stream, e.g. a 288x384 thermal camera beside 480x640 RGB, is its own group).
            groups: dict[tuple, list[str]] = {}
            for m in wanted:
                groups.setdefault(np.asarray(sources[m]).shape[1:], []).append(m)
            for mods in groups.values():
                tokens = self.encode(np.concatenate([np.asarray(sources[m]) for m in mods]))
                counts = np.cumsum([0] + [len(sources[m]) for m in mods])
                for m, a, b in zip(mods, counts[:-1], counts[1:]):
                    video.setdefault("features", {})[m] = tokens[a:b]
            video.setdefault("model_meta", {})[self.cfg.name] = dict(self.meta)
        return batch
