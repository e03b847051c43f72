"""The CREMA model configuration: one dataclass, two presets (tiny and full).

`crema_tiny()` and `crema_full()` in model/crema.py build from these; every field is a Hydra key
under `model.` (conf/model/crema_tiny.yaml, conf/model/crema_full.yaml).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Modalities whose stored features are frozen-ViT tokens on the same frame indices as RGB.
FRAME_MODALITIES = ("rgb", "depth", "flow", "normal")
# One clip-level input each: audio chunks, one point cloud.
CLIP_MODALITIES = ("audio", "pointcloud")
MODALITIES = FRAME_MODALITIES + CLIP_MODALITIES
FUSIONS = ("espresso", "concat")
ESPRESSO_MODES = ("concat", "add")
CHOICE_SCORING = ("letter", "option_text")
LOSSES = ("lm", "options")

# Pinned hub revisions of the full-size weights (the snapshots CREMA-grade runs were checked with).
BLIP2_ID = "Salesforce/blip2-flan-t5-xl"
BLIP2_REVISION = "0eb0d3b46c14c1f8c7680bca2693baafdb90bb28"
T5_ID = "google/flan-t5-xl"
T5_REVISION = "7d6315df2c2fb742f0f5b556879d730926ca9001"

# Architecture of the full-size frozen parts, as published in the two hub configs. Used to build
# on the meta device (parameter counts without weights); a weight load re-reads the real configs
# and refuses a checkpoint whose shapes differ.
FULL_QFORMER = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    cross_attention_frequency=2, encoder_hidden_size=1408, layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
)
FULL_T5 = dict(
    vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
    num_heads=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)


@dataclass
class CremaConfig:
    """Everything that determines a CREMA model (architecture, frozen weights, decoding).

    `vision_width` / `audio_width` are the widths of the cached features; `None` means "take
    them from the feature store" (the trainer fills them in and refuses a store that disagrees).
    """

    modalities: list[str] = field(default_factory=lambda: ["rgb"])
    num_frames: int = 4
    fusion: str = "espresso"          # espresso: self-gated fusion of the non-RGB modalities; concat: v1
    espresso_mode: str = "concat"     # concat: fused tokens after RGB's; add: added onto RGB's tokens
    lora_rank: int = 64               # alpha is always equal to the rank: scale exactly 1
    lora_dropout: float = 0.1
    num_query_tokens: int = 32
    vision_width: int | None = None
    audio_width: int | None = None
    voxel_positions: int = 256        # voxel coordinates are uint8 in [0, 255]
    voxel_pe_scale: float = 0.01
    frame_prefix: str = "Frame {i}: "
    max_prompt_tokens: int = 77
    max_answer_tokens: int = 32
    choice_scoring: str = "letter"    # letter: CREMA's "Option X" letter logits; option_text: rank option texts
    # lm: CREMA's LM loss on the target text over the whole vocabulary. options (option_text only):
    # cross-entropy over the question's options ranked by their mean token log-likelihood (rank
    # classification); open-ended questions keep the LM loss.
    loss: str = "lm"
    num_beams: int = 5
    max_new_tokens: int = 10
    # Frozen parts. pretrained=True loads them (hub id or local folder); False builds random-init
    # modules of the same classes from `qformer` / `t5` (architecture kwargs) and `seed`.
    pretrained: bool = False
    blip2: str = BLIP2_ID
    blip2_revision: str = BLIP2_REVISION
    t5_model: str = T5_ID
    t5_revision: str = T5_REVISION
    tokenizer: str = "pretrained"     # pretrained: the T5 checkpoint's; byt5: transformers' ByT5Tokenizer
    qformer: dict[str, Any] = field(default_factory=lambda: dict(FULL_QFORMER))
    t5: dict[str, Any] = field(default_factory=lambda: dict(FULL_T5))
    # Random-init presets only: a safetensors file of T5 weights to load into the `t5` architecture
    # (the stand-in LLM the trainer builds when standin.enabled; model/standin.py).
    t5_weights: str | None = None
    # tokenizer=byt5 only: phrases spelled as ONE token each (a subword vocabulary's common words);
    # answer_tokens=true makes the trainer fill it with the train split's distinct answers.
    phrase_tokens: list[str] = field(default_factory=list)
    answer_tokens: bool = False
    standin: dict[str, Any] = field(default_factory=dict)  # model/standin.py StandinConfig
    seed: int = 0

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ValueError(f"model.modalities: unknown {unknown}; choose from {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"model.modalities={self.modalities}: give each modality once, at least one")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion={self.fusion!r}: choose from {list(FUSIONS)}")
        if self.espresso_mode not in ESPRESSO_MODES:
            raise ValueError(f"model.espresso_mode={self.espresso_mode!r}: choose from {list(ESPRESSO_MODES)}")
        if self.fusion == "espresso" and len(self.modalities) > 1 and "rgb" not in self.modalities:
            raise ValueError(
                f"model.fusion=espresso fuses the other modalities onto RGB's tokens, but "
                f"model.modalities={self.modalities} has no rgb; add rgb or use model.fusion=concat"
            )
        if self.choice_scoring not in CHOICE_SCORING:
            raise ValueError(f"model.choice_scoring={self.choice_scoring!r}: choose from {list(CHOICE_SCORING)}")
        if self.loss not in LOSSES:
            raise ValueError(f"model.loss={self.loss!r}: choose from {list(LOSSES)}")
        if self.loss == "options" and self.choice_scoring != "option_text":
            raise ValueError("model.loss=options ranks the options' texts: it needs model.choice_scoring=option_text "
                             "(letter scoring learns the \"Option X\" target with model.loss=lm)")
        if self.tokenizer not in ("pretrained", "byt5"):
            raise ValueError(f"model.tokenizer={self.tokenizer!r}: choose pretrained or byt5")
        self.qformer = dict(self.qformer)
        self.t5 = dict(self.t5)
        self.standin = dict(self.standin)
        self.phrase_tokens = list(self.phrase_tokens)
        if (self.phrase_tokens or self.answer_tokens) and self.tokenizer != "byt5":
            raise ValueError("model.phrase_tokens / model.answer_tokens extend the byt5 tokenizer; "
                             f"model.tokenizer={self.tokenizer!r} has its own vocabulary")
        if self.pretrained and (self.t5_weights or self.standin.get("enabled")):
            raise ValueError("model.t5_weights / model.standin are for random-init presets (pretrained=false); "
                             "a pretrained preset loads model.t5_model")

    @property
    def fused_modalities(self) -> list[str]:
        """The modalities that go through the espresso fusion (all but RGB), in config order;
        none without RGB to fuse onto (a single non-RGB modality runs alone)."""
        if self.fusion != "espresso" or "rgb" not in self.modalities:
            return []
        return [m for m in self.modalities if m != "rgb"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CremaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(names)}")
        return cls(**d)
