"""What users look at: metrics as JSON lines and a PNG of the training curves."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path


class MetricsLog:
    """Append-only JSON lines: one object per event ("step", "epoch", "eval", "data", "test", ...)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> dict:
        row = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        return row

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


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
