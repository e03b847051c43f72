"""scripts/bench.py's summary of the committed bench/results/*.json: the table and the plot read the
files `make bench` wrote (so a change of either side's keys is caught here, not after a long bench)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import bench

RESULTS = Path(bench.ROOT) / "bench/results"


def test_table_and_plot_read_the_committed_results(tmp_path, capsys):
    result = json.loads((RESULTS / "extract.json").read_text())
    long = result["long"]
    bench.print_table(result, small=12, large=120, scale=10)
    table = capsys.readouterr().out
    assert f"{long['videos']} videos, one run ({long['plan']})" in table
    assert f"wall = {1 / long['efficiency']:.2f} x busy/CPUs" in table
    assert "reference workflow / this project" in table  # reference.json was read
    png = bench.plot(result, tmp_path / "bench.png")
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[1] > img.shape[0] > 300  # two panels side by side
    # both panels hold drawings, not just axes: each half has many non-white pixels
    left, right = img[:, : img.shape[1] // 2], img[:, img.shape[1] // 2 :]
    assert (left < 200).mean() > 0.02 and (right < 200).mean() > 0.02
