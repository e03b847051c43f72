"""What users look at: metrics as JSON lines and a PNG of the training curves."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

from core.util import write_text_atomic
from trainer.killpoints import reached

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSON lines: one object per event ("step", "epoch", "eval", "data", "test", ...).

    A checkpoint records how many lines the log had when it was saved (`lines`); a resume keeps
    exactly those (`truncate`), so rows written after the checkpoint, or a line torn by a kill,
    are dropped and rewritten by the resumed run instead of appearing twice.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = len(self._complete_lines())

    def write(self, event: str, **fields) -> dict:
        row = {"event": event, "time": round(time.time(), 3), **fields}
        text = json.dumps(row, sort_keys=True) + "\n"
        with open(self.path, "a") as f:
            # two writes so that the kill tests can tear a line exactly as a kill mid-write does
            f.write(text[: len(text) // 2])
            f.flush()
            reached("metrics:torn")
            f.write(text[len(text) // 2:])
        self.lines += 1
        return row

    def sync(self) -> None:
        """fsync the log, so that the line count a checkpoint records is on disk before it."""
        if self.path.exists():
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())

    def _complete_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return [line for line in self.path.read_text().splitlines(keepends=True) if line.endswith("\n")]

    def truncate(self, lines: int) -> None:
        """Keep the first `lines` complete lines (atomically rewritten): the log as a checkpoint saw it."""
        kept = self._complete_lines()[:lines]
        if len(kept) < lines:
            log.warning("%s has %d complete lines, the checkpoint saw %d: %d rows were lost outside the trainer",
                        self.path, len(kept), lines, lines - len(kept))
        write_text_atomic(self.path, "".join(kept))
        self.lines = len(kept)

    def reset(self) -> None:
        """Start an empty log (a run that starts over)."""
        self.path.unlink(missing_ok=True)
        self.lines = 0

    def read(self) -> list[dict]:
        """Every row that parses; a torn or garbled line is skipped and reported with its number."""
        if not self.path.exists():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                log.warning("%s line %d is torn or garbled (a killed write?): skipped: %.60r", self.path, number, line)
        return rows


LOSS_LABELS = {"lm": "LM loss (answer tokens)", "options": "rank-classification loss (options)"}


def _loss_lines(steps: dict) -> dict[str, list[tuple[int, float]]]:
    """{label: [(step, loss)]}: one line per modality, or ONE line when every modality logged the
    same value (a joint step logs its loss under each modality: six identical curves hide each other)."""
    losses = defaultdict(list)
    for s in sorted(steps):
        for owner, v in steps[s]["loss"].items():
            losses[owner].append((s, v))
    if len(losses) > 1 and all(len(set(round(v, 6) for v in steps[s]["loss"].values())) == 1 for s in steps):
        return {"all modalities": next(iter(losses.values()))}
    return dict(losses)


def plot_curves(rows: list[dict], out: Path, *, loss: str | None = None) -> Path:
    """Three panels: training loss per modality step, validation accuracy per epoch, and each
    modality's average LoRA gradient norm per epoch with its early exit marked. `loss` is
    model.loss (lm | options), for the axis label; the setup event's `loss` is used when absent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A resumed run re-logs nothing twice, but keep the last value per key to be safe.
    steps = {r["step"]: r for r in rows if r["event"] == "step"}
    epochs = {r["epoch"]: r for r in rows if r["event"] == "epoch"}
    evals = {r["epoch"]: r for r in rows if r["event"] == "eval" and r.get("split") == "val"}

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    losses = _loss_lines(steps)
    for owner, pts in losses.items():
        axes[0].plot(*zip(*pts), label=owner, lw=1)
    loss = loss or next((r.get("loss") for r in rows if r["event"] == "setup"), None)
    axes[0].set(title="training loss (per modality step)", xlabel="optimizer step",
                ylabel=LOSS_LABELS.get(loss, "training loss (model.loss)"))
    if losses:
        axes[0].legend(fontsize=8)

    if evals:
        xs = sorted(evals)
        axes[1].plot(xs, [evals[e]["strict"] for e in xs], "o-", label="strict EM")
        axes[1].plot(xs, [evals[e]["lenient"] for e in xs], "s--", label="lenient (reference)", alpha=0.7)
        chance = next((evals[e].get("chance") for e in xs if evals[e].get("chance") is not None), None)
        if chance is not None:
            axes[1].axhline(chance, color="grey", ls=":", label=f"chance {chance:.0f}%")
        axes[1].legend(fontsize=8)
    axes[1].set(title="validation accuracy", xlabel="epoch", ylabel="%")

    norms = defaultdict(list)
    exits = {}
    for e in sorted(epochs):
        for m, v in epochs[e].get("grad_norm", {}).items():
            norms[m].append((e, v))
        for m, at in epochs[e].get("exited", {}).items():
            exits[m] = at
    for m, pts in norms.items():
        line, = axes[2].plot(*zip(*pts), "o-", label=m, lw=1, ms=3)
        if m in exits:
            y = dict(pts).get(exits[m])
            axes[2].plot([exits[m]], [y], "x", ms=12, mew=2, color=line.get_color())
    axes[2].set(title="LoRA gradient norm (x = early exit)", xlabel="epoch", ylabel="epoch mean")
    if norms:
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


class NullLog:
    """MetricsLog's interface for the ranks other than 0: only rank 0 writes the run's files."""

    lines = 0

    def write(self, event: str, **fields) -> dict:
        return {"event": event, **fields}

    def sync(self) -> None:
        pass

    def truncate(self, lines: int) -> None:
        self.lines = lines

    def reset(self) -> None:
        self.lines = 0

    def read(self) -> list[dict]:
        return []
