"""Optimizer, learning-rate schedule and the gradient-norm early exit.

AdamW (0.9, 0.999) with weight decay on weight matrices and query tokens, none on biases and
norms. Two learning-rate schedules (`trainer.schedule`):
- `lavis` (the reference's `linear_warmup_cosine_lr`): epoch 0 warms up linearly from
  `warmup_start_lr` over its first `warmup_steps` steps and then holds `lr`; epoch e >= 1 uses
  the cosine value of e / epochs, constant over the epoch (a warm-up longer than epoch 0 is cut).
- `per_step`: linear warm-up then a cosine to `min_lr` over every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def param_groups(named: dict[str, nn.Parameter], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (matrices, query tokens) and not (biases, LayerNorms, 1-D)."""
    decay, no_decay = [], []
    for name, p in named.items():
        if p.ndim < 2 or name.endswith(".bias") or ".ln." in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate after `step` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lavis_lr(step: int, *, steps_per_epoch: int, epochs: int, warmup_steps: int, warmup_start_lr: float,
             lr: float, min_lr: float) -> float:
    """The learning rate of optimizer step `step` (0-based) under LAVIS's linear_warmup_cosine_lr."""
    epoch, within = divmod(step, max(1, steps_per_epoch))
    if epoch == 0:
        return min(lr, warmup_start_lr + (lr - warmup_start_lr) * within / max(warmup_steps, 1))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def build_optimizer(named: dict[str, nn.Parameter], *, lr: float, min_lr: float, weight_decay: float,
                    betas: Sequence[float], warmup_steps: int, steps_per_epoch: int, epochs: int,
                    schedule: str = "per_step", warmup_start_lr: float = 0.0):
    """(AdamW, LambdaLR) over the given parameters; the scheduler is stepped once per optimizer step."""
    opt = torch.optim.AdamW(param_groups(named, weight_decay), lr=lr, betas=tuple(betas))
    if schedule == "lavis":
        def at(step: int) -> float:
            return lavis_lr(step, steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_steps=warmup_steps,
                            warmup_start_lr=warmup_start_lr, lr=lr, min_lr=min_lr)
    else:
        def at(step: int) -> float:
            return warmup_cosine(step, warmup_steps=warmup_steps, total_steps=epochs * steps_per_epoch,
                                 lr=lr, min_lr=min_lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: at(step) / lr)


def should_exit(history: Sequence[float], current: float, *, epoch: int, tau: float, start_epoch: int) -> bool:
    """CREMA's gradient-norm early exit for one modality, decided at the end of `epoch` (0-based).

    history: that modality's average LoRA gradient norm of every previous epoch; current: this
    epoch's. From `start_epoch` on, a current average above tau x the mean of the history stops
    the modality for good.
    """
    if epoch < start_epoch or not history:
        return False
    return current > tau * (sum(history) / len(history))


def grad_norm(params: Sequence[nn.Parameter]) -> float:
    """L2 norm of the gradients of `params` (those without a gradient count as zero)."""
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0
