"""The trainer's own config, typed: `trainer.` in conf/trainer/full.yaml (tiny.yaml = full + overrides).

The yaml is the one source of the values: every field is required here, so a key missing from
the yaml (or misspelt on the command line) is an error naming it, not a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.util import to_plain
from trainer.tracking import WandbConfig, backends

MISSING_POLICIES = ("drop", "zero")
SCHEDULES = ("lavis", "per_step")
NORMALIZERS = ("none", "blip_question")


@dataclass(frozen=True)
class DataConfig:
    """`trainer.data`: how questions meet their cached features."""

    missing: str        # a modality missing for a video: drop the question | zero (zero + mask it)
    max_points: int     # point-cloud points per sample (uniform subsample)
    num_workers: int    # DataLoader workers
    seed: int           # frame and point sampling draws from (seed, epoch, sample index)

    def __post_init__(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise ValueError(f"trainer.data.missing={self.missing!r}: choose from {list(MISSING_POLICIES)}")


@dataclass(frozen=True)
class PromptConfig:
    """`trainer.prompt`: {question} and {options} are filled per record; a record that carries a
    situation (SQA3D) gets `situation` around its prompt ({situation}, {prompt}). Saved in every
    checkpoint: evaluation uses the prompt the weights were trained with."""

    multiple_choice: str
    open_ended: str
    situation: str             # wraps the prompt of a record with a situation: "{situation}. {prompt}"
    normalize: str             # question and situation text: none | blip_question (LAVIS's text processor)
    max_words: int             # blip_question keeps the first max_words words

    def __post_init__(self) -> None:
        for field in ("{situation}", "{prompt}"):
            if field not in self.situation:
                raise ValueError(f"trainer.prompt.situation={self.situation!r} lacks {field}")
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"trainer.prompt.normalize={self.normalize!r}: choose from {list(NORMALIZERS)}")


@dataclass(frozen=True)
class DecodingConfig:
    """`trainer.decoding`: beam search for open-ended answers (multiple choice reads letter logits)."""

    num_beams: int
    length_penalty: float      # the reference's -1 favours short answers
    max_new_tokens: int
    min_length: int


@dataclass(frozen=True)
class EarlyExitConfig:
    """`trainer.early_exit`: CREMA's gradient-norm rule, per modality."""

    enabled: bool
    tau: float          # exit when this epoch's mean LoRA grad norm > tau x mean of earlier epochs
    start_epoch: int    # 0-based epoch at whose end the rule is first applied


@dataclass(frozen=True)
class TrainerConfig:
    """`trainer`: the optimisation recipe, checkpointing and resume."""

    epochs: int
    global_batch: int   # questions per optimizer step, as the reference's run (per-GPU batch x GPUs)
    batch_size: int     # questions per micro-batch on one device (one rank)
    eval_batch_size: int
    lr: float
    min_lr: float
    weight_decay: float
    betas: tuple[float, float]
    schedule: str       # lavis: warm-up inside epoch 0, cosine stepped per epoch | per_step
    warmup_steps: int
    warmup_start_lr: float
    sequential: bool
    early_exit: EarlyExitConfig
    num_threads: int
    bf16: bool
    log_every: int
    checkpoint_every: int
    keep_last: int
    max_steps: int
    resume: str
    data: DataConfig
    prompt: PromptConfig
    decoding: DecodingConfig
    logger: Any         # experiment tracking (trainer/tracking.py): tensorboard | wandb | none, or a list
    wandb: WandbConfig

    def __post_init__(self) -> None:
        backends(self.logger)  # an unknown name is an error now, not after an epoch
        if self.schedule not in SCHEDULES:
            raise ValueError(f"trainer.schedule={self.schedule!r}: choose from {list(SCHEDULES)}")
        self.grad_accum(1)

    def grad_accum(self, ranks: int) -> int:
        """Micro-batches per optimizer step on each of `ranks` data-parallel processes; a global
        batch that batch_size x ranks does not divide is a ValueError naming the numbers."""
        per_step = self.batch_size * ranks
        if self.batch_size < 1 or ranks < 1 or self.global_batch % per_step:
            on = f" x {ranks} ranks" if ranks > 1 else ""
            raise ValueError(f"trainer.global_batch={self.global_batch} is not a multiple of trainer.batch_size="
                             f"{self.batch_size}{on}: choose batch_size (and the number of processes) so that "
                             f"batch_size x ranks x accumulation = global_batch")
        return self.global_batch // per_step

    @classmethod
    def from_cfg(cls, node: Any) -> "TrainerConfig":
        """From the composed `trainer` node (or a plain dict), checked key by key."""
        d = dict(to_plain(node))
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        nested = {"early_exit": EarlyExitConfig, "data": DataConfig, "prompt": PromptConfig,
                  "decoding": DecodingConfig, "wandb": WandbConfig}
        for key, sub in nested.items():
            if key in d:
                d[key] = _typed(sub, d[key], f"trainer.{key}")
        return _typed(cls, d, "trainer")

    def resume_view(self) -> dict:
        """The keys that change what a run computes: a resume refuses a checkpoint made with others.
        The number of ranks is not one of them: a run resumes onto another (docs/training.md)."""
        keep = ("global_batch", "batch_size", "lr", "min_lr", "weight_decay", "betas", "schedule",
                "warmup_steps", "warmup_start_lr", "epochs", "sequential", "early_exit", "bf16", "data", "prompt")
        full = dataclasses.asdict(self)
        full["betas"] = list(self.betas)
        full["data"].pop("num_workers")  # workers change speed, not what a batch holds
        return {k: full[k] for k in keep}


def _typed(cls, d: dict, where: str):
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    missing = [n for n in names if n not in d]
    if unknown or missing:
        parts = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        raise ValueError(f"{where}: {'; '.join(parts)} (conf/trainer/full.yaml lists every key)")
    return cls(**d)
