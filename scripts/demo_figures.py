# make demo-figures   (a full demo extract + train + eval, then this: python scripts/demo_figures.py bench/tmp/demo)
"""The figures README.md and docs/training.md quote about the demo, gathered from one run's
files into bench/results/demo.json (committed; the docs point to it):

    <folder>/features/demo/report.json   the extraction (videos, shards, wall seconds)
    <folder>/train/metrics.jsonl         per-epoch validation, early exits, best checkpoint, test
    <folder>/train/eval/val.json         the modality combinations on the best checkpoint
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "demo.json"


def _percent(summary: dict) -> dict:
    return {"all": round(summary["strict"], 1), "n": summary["n"],
            **{q: round(v["strict"], 1) for q, v in sorted(summary.get("by_qtype", {}).items())}}


def training_figures(metrics: Path) -> dict:
    """Per-epoch val accuracy, early exits, the best epoch's val/test by question type, wall time."""
    events = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    val = [e for e in events if e["event"] == "eval" and e["split"] == "val"]
    exits = {m: e["epoch"] for e in events if e["event"] == "epoch" for m in e.get("newly_exited", [])}
    final = next(e for e in events if e["event"] == "final_val")
    test = next(e for e in events if e["event"] == "test")
    best = max(val, key=lambda e: e["strict"])
    return {"val_by_epoch": [round(e["strict"], 1) for e in val], "best_epoch": best["epoch"],
            "val": _percent(final), "test": _percent(test), "early_exit_epoch": exits,
            "chance": final["chance"], "wall_seconds": round(test["time"] - events[0]["time"], 1)}


def main(folder: Path) -> None:
    store = json.loads((folder / "features" / "demo" / "report.json").read_text())
    combos = json.loads((folder / "train" / "eval" / "val.json").read_text())["results"]
    figures = {
        "measured": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
        "command": "make demo-figures",
        "extract": {"videos": store["videos_total"], "videos_ok": store["videos_ok"],
                    "shards": store["shards_total"], "wall_seconds": round(store["run"]["wall_seconds"], 1)},
        "train": training_figures(folder / "train" / "metrics.jsonl"),
        "eval_val_combinations": {r["label"]: _percent(r["summary"]) for r in combos},
    }
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/demo_figures.py <folder of a make demo-figures run>")
    main(Path(sys.argv[1]))
