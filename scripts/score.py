# make score DATASET=sqa3d PRED=outputs/train/sqa3d/eval/test.predictions.jsonl
#   == python scripts/score.py dataset=sqa3d pred=<predictions.jsonl>
"""Re-score saved predictions with strict EM and the dataset's reference scorer (no model)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainer.metrics import Scoring, chance_level, qtype_table, score, summarize

REQUIRED = ("qid", "qtype", "prediction", "answer")


def read_predictions(path: Path) -> list[dict]:
    """The rows of a predictions JSONL file; a ValueError naming the file and line otherwise."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file; `make eval` writes <run_dir>/eval/<split>.predictions.jsonl")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: lacks {missing}; every line needs {list(REQUIRED)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: holds no predictions")
    return rows


def rescore(rows: list[dict], scoring: Scoring) -> dict[str, dict]:
    """Modality-subset label -> summary. A multiple-choice row (answer_idx >= 0) is scored on its choice."""
    by_label = defaultdict(list)
    for row in rows:
        answer_idx = int(row.get("answer_idx", -1))
        choice = row.get("choice")
        scored = score({"choice": choice, "text": str(row["prediction"])}, str(row["answer"]), answer_idx, scoring)
        by_label[row.get("modalities", "all")].append({**row, **scored})
    out = {}
    for label, scored_rows in by_label.items():
        out[label] = summarize(scored_rows, scoring)
        out[label]["chance"] = chance_level(scored_rows)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    try:
        scoring = Scoring.from_dataset(cfg.dataset)
        results = rescore(read_predictions(Path(cfg.pred)), scoring)
    except ValueError as exc:  # user-fixable
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for label, summary in results.items():
        print(qtype_table(summary, f"{cfg.dataset.name}: {label}") + "\n")
    print(json.dumps({"dataset": cfg.dataset.name, "pred": str(cfg.pred), "scorer": scoring.reference,
                      "results": {label: {k: s[k] for k in ("n", "strict", "lenient", "by_qtype", "by_group")}
                                  for label, s in results.items()}}, sort_keys=True))


if __name__ == "__main__":
    main()
