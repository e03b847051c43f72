"""The CREMA model configuration: one dataclass. The presets are yaml files only
(conf/model/crema_full.yaml, and crema_tiny.yaml = crema_full + overrides); every field is a
Hydra key under `model.`, and `model.crema.build_crema(**fields)` builds from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.modalities import BASE, check

FUSIONS = ("espresso", "concat")
FROZEN_DTYPES = ("auto", "bfloat16", "float32")
ESPRESSO_MODES = ("concat", "add")
CHOICE_SCORING = ("letter", "option_text")
LOSSES = ("lm", "options")


@dataclass
class CremaConfig:
    """Everything that determines a CREMA model (architecture, frozen weights, decoding).

    The defaults are CREMA's method settings; the architecture of the frozen parts (`qformer`,
    `t5`: transformers config kwargs) and the weights to load come from a preset yaml.
    `vision_width` / `audio_width` are the widths of the cached features; `None` means "take
    them from the feature store" (the trainer fills them in and refuses a store that disagrees).
    """

    modalities: list[str] = field(default_factory=lambda: [BASE])
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
    # The reference adds the position encoding to point features with no LayerNorm (its ln_pc is
    # never used): 3D-LLM's features go in as stored. True: point features pass the head's ln first.
    point_layernorm: bool = False
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
    # Frozen parts. pretrained=True loads them (hub id + revision, or a local folder); False builds
    # random-init modules of the same classes from `qformer` / `t5` (architecture kwargs) and `seed`.
    pretrained: bool = False
    blip2: str | None = None
    blip2_revision: str | None = None
    t5_model: str | None = None
    t5_revision: str | None = None
    tokenizer: str = "pretrained"     # pretrained: the T5 checkpoint's; byt5: transformers' ByT5Tokenizer
    # The frozen LLM's weights, built (or loaded) directly in this dtype: auto is bfloat16 wherever
    # the device computes it (CPU and bf16 GPUs), float32 on a GPU without bf16. The Q-Former and
    # every trainable parameter stay float32 (model/crema.py: frozen_dtype).
    frozen_dtype: str = "float32"
    qformer: dict[str, Any] = field(default_factory=dict)
    t5: dict[str, Any] = field(default_factory=dict)
    # tokenizer=byt5 only: phrases spelled as ONE token each (a subword vocabulary's common words);
    # answer_tokens=true makes the trainer fill it with the train split's distinct answers.
    phrase_tokens: list[str] = field(default_factory=list)
    answer_tokens: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.modalities = check(self.modalities, "model.modalities")
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"model.modalities={self.modalities}: give each modality once, at least one")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion={self.fusion!r}: choose from {list(FUSIONS)}")
        if self.espresso_mode not in ESPRESSO_MODES:
            raise ValueError(f"model.espresso_mode={self.espresso_mode!r}: choose from {list(ESPRESSO_MODES)}")
        if self.fusion == "espresso" and len(self.modalities) > 1 and BASE not in self.modalities:
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
        if self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"model.frozen_dtype={self.frozen_dtype!r}: choose from {list(FROZEN_DTYPES)}")
        if self.tokenizer not in ("pretrained", "byt5"):
            raise ValueError(f"model.tokenizer={self.tokenizer!r}: choose pretrained or byt5")
        self.qformer = dict(self.qformer)
        self.t5 = dict(self.t5)
        self.phrase_tokens = list(self.phrase_tokens)
        if (self.phrase_tokens or self.answer_tokens) and self.tokenizer != "byt5":
            raise ValueError("model.phrase_tokens / model.answer_tokens extend the byt5 tokenizer; "
                             f"model.tokenizer={self.tokenizer!r} has its own vocabulary")
        if self.pretrained and not (self.blip2 and self.t5_model):
            raise ValueError("model.pretrained=true loads model.blip2 and model.t5_model (hub ids or local "
                             "folders); set both (conf/model/crema_full.yaml has the defaults)")

    @property
    def fused_modalities(self) -> list[str]:
        """The modalities that go through the espresso fusion (all but RGB), in config order;
        none without RGB to fuse onto (a single non-RGB modality runs alone)."""
        if self.fusion != "espresso" or BASE not in self.modalities:
            return []
        return [m for m in self.modalities if m != BASE]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CremaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(names)}")
        return cls(**d)
