"""Experiment tracking: the trainer's metrics rows as TensorBoard scalars and/or a Weights & Biases run.

    make train DATASET=demo                                    # TensorBoard events in <run_dir>/tensorboard
    make train DATASET=demo ARGS="trainer.logger=wandb"        # a W&B run (WANDB_MODE=offline: no network)
    make train DATASET=demo ARGS="trainer.logger=[tensorboard,wandb]"   # both; trainer.logger=none: neither

The recipe hands every row it writes to metrics.jsonl (trainer/report.py) to `Tracker.log`; this
module turns a row into scalars named by what they are (`loss/<modality pass>`, `lr`,
`grad_norm/<modality>`, `val/strict/<question type>`, `early_exit/<modality>`...). metrics.jsonl
stays the record a resume trusts; a tracker is a view of it for people watching many runs.

Resume: a run continued from a checkpoint at optimizer step S logged steps after S before it was
killed; the resumed run logs them again. TensorBoard is opened with `purge_step=S + 1`, so its
readers drop the old events from S + 1 on; a W&B run is reopened under the same id (the run's
identity digest), and W&B keeps one value per step.

Only the main process logs (rank 0 under torchrun): the others get a tracker that does nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
SPLITS = {"eval": "val", "final_val": "final_val", "test": "test"}  # metrics row event -> scalar prefix


@dataclass(frozen=True)
class WandbConfig:
    """`trainer.wandb`: where a W&B run goes (WANDB_MODE in the environment wins over `mode`)."""

    project: str
    name: str | None    # display name; null: the run folder's name
    dir: str | None     # where wandb/ goes; null: the run folder
    mode: str           # offline (no network; `wandb sync` uploads later) | online | disabled
    id: str | None      # the W&B run id; null: the run's identity digest, so a resume continues it

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"trainer.wandb.mode={self.mode!r}: choose from {list(WANDB_MODES)}")


def backends(logger: Any) -> list[str]:
    """`trainer.logger` (a name or a list of names) as a checked list; `none` alone means no tracker."""
    names = [logger] if isinstance(logger, str) else list(logger or [])
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"trainer.logger={logger!r}: unknown {unknown}; choose from {list(BACKENDS)} or a list of them")
    return [n for n in names if n != "none"]


# ---------------------------------------------------------------------- rows -> scalars


def scalars(row: dict) -> dict[str, float]:
    """The scalars of one metrics.jsonl row (empty for rows that hold none: setup, data)."""
    event = row.get("event")
    if event == "step":
        out = {f"loss/{k}": v for k, v in row.get("loss", {}).items()}
        out.update({f"grad_norm/{m}": v for m, v in row.get("grad_norm", {}).items()})
        out["lr"] = row["lr"]
        return out
    if event == "epoch":
        out = {"epoch/train_loss": row["train_loss"], "epoch/exited_modalities": float(len(row.get("exited", {})))}
        out.update({f"epoch/grad_norm/{m}": v for m, v in row.get("grad_norm", {}).items()})
        # an exit is an event at the step it happened: 1 there, plotted as a spike per modality
        out.update({f"early_exit/{m}": 1.0 for m in row.get("newly_exited", [])})
        return out
    if event in SPLITS:
        return _accuracies(SPLITS[event], row)
    return {}


def _accuracies(prefix: str, summary: dict) -> dict[str, float]:
    out = {f"{prefix}/{k}": summary[k] for k in ("strict", "lenient", "chance") if summary.get(k) is not None}
    for kind in ("by_qtype", "by_group"):
        for name, acc in summary.get(kind, {}).items():
            out[f"{prefix}/strict/{name}"] = acc["strict"]
            out[f"{prefix}/lenient/{name}"] = acc["lenient"]
    return out


def texts(row: dict) -> dict[str, str]:
    """Text events of a row: an early exit, said in words."""
    if row.get("event") == "epoch" and row.get("newly_exited"):
        return {"early_exit": f"epoch {row['epoch']} (step {row['step']}): {', '.join(row['newly_exited'])} exited; "
                              f"exited so far {row.get('exited', {})}"}
    return {}


# ---------------------------------------------------------------------- backends


class Backend(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def config(self, text: str, step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoard:
    """Event files under `folder`. Readers drop earlier sessions' events from `resume_step` + 1 on
    (0, a fresh run: all of them)."""

    def __init__(self, folder: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked for

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resume_step + 1 if resume_step else 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, global_step=step)

    def config(self, text: str, step: int) -> None:
        self.text("config", f"```yaml\n{text}\n```", step)  # Markdown: TensorBoard shows it as YAML

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """One W&B run, resumed under the same id when the training run resumes."""

    def __init__(self, wc: WandbConfig, run_dir: Path, run_id: str, config: dict):
        import wandb  # only when asked for: its import takes a second

        folder = Path(wc.dir or run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=wc.project, name=wc.name or run_dir.name, dir=str(folder),
                              mode=os.environ.get("WANDB_MODE", wc.mode), id=wc.id or run_id, resume="allow",
                              config=config, reinit="create_new")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.run.log({tag: text}, step=step)

    def config(self, text: str, step: int) -> None:
        """Nothing: the run holds the config already (wandb.init's `config`, searchable there)."""

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """What the recipe talks to: `log(row)` for each metrics row, `config(text)` once, `close()`."""

    def __init__(self, outputs: list[Backend]):
        self.outputs = outputs

    def log(self, row: dict) -> dict:
        """Send a metrics row's scalars and text events to every backend; returns the row."""
        values, notes = scalars(row), texts(row)
        for out in self.outputs:
            if values:
                out.scalars(values, row["step"])
            for tag, text in notes.items():
                out.text(tag, text, row["step"])
        return row

    def config(self, text: str, step: int) -> None:
        """The composed config (YAML) as a text event: which settings made these curves."""
        for out in self.outputs:
            out.config(text, step)

    def close(self) -> None:
        for out in self.outputs:
            out.close()
        self.outputs = []


def build(logger: Any, wandb_cfg: WandbConfig, *, run_dir: Path, run_id: str, resume_step: int, config: dict,
          is_main: bool) -> Tracker:
    """The tracker of a run: `logger`'s backends on the main process (`is_main`: the trainer's
    rank 0, trainer/distributed.py), nothing elsewhere.
    `resume_step`: the optimizer step the run continues from (0 for a fresh run)."""
    names = backends(logger)
    if not is_main:
        return Tracker([])
    outputs: list[Backend] = []
    if "tensorboard" in names:
        outputs.append(TensorBoard(Path(run_dir) / "tensorboard", resume_step))
    if "wandb" in names:
        outputs.append(Wandb(wandb_cfg, Path(run_dir), run_id, config))
    if outputs:
        log.info("tracking with %s in %s", "+".join(names), run_dir)
    return Tracker(outputs)
