"""curves.png (trainer/report.py): the loss axis names the loss trained, and modalities that logged
one shared value are one line, not six drawn on top of each other (issue 27)."""

from __future__ import annotations

import matplotlib
import matplotlib.axes

matplotlib.use("Agg")

from trainer import report  # noqa: E402

MODS = ["rgb", "depth", "flow", "normal", "pointcloud", "audio"]


def rows(shared: bool) -> list[dict]:
    steps = [{"event": "step", "step": s, "epoch": 0,
              "loss": {m: 1.0 / s + (0 if shared else 0.1 * i) for i, m in enumerate(MODS)}} for s in range(1, 5)]
    return [{"event": "setup", "step": 0, "modalities": MODS}, *steps]


def test_identical_per_modality_losses_make_one_line_and_distinct_ones_one_each():
    assert list(report._loss_lines({r["step"]: r for r in rows(True) if r["event"] == "step"})) == ["all modalities"]
    assert list(report._loss_lines({r["step"]: r for r in rows(False) if r["event"] == "step"})) == MODS


def test_the_loss_axis_names_the_loss(tmp_path, monkeypatch):
    labels = []
    real_set = matplotlib.axes.Axes.set

    def record(ax, **kwargs):
        labels.append(kwargs.get("ylabel"))
        return real_set(ax, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set", record)
    out = report.plot_curves(rows(True), tmp_path / "curves.png", loss="options")
    assert out.is_file() and labels[0] == "rank-classification loss (options)"
    labels.clear()
    report.plot_curves(rows(True), tmp_path / "curves.png", loss="lm")
    assert labels[0] == "LM loss (answer tokens)"
