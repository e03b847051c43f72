"""What `make data` (scripts/data.py) reports about a dataset, without extracting anything: per
split, the questions, the distinct videos (clips, scenes) they ask about, which of those videos'
media exist, and the question types."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.schema import DatasetIndex

SHOW_MISSING = 5  # missing paths listed per split; the count covers all of them


def _splits(index: DatasetIndex) -> list[str]:
    """The question splits, then splits that have videos but no questions (`videos`: "all")."""
    extra = [s for s in dict.fromkeys(v.split for v in index.videos) if s not in index.qa]
    return list(index.qa) + extra


def check_index(index: DatasetIndex) -> dict[str, dict]:
    """{split: {questions, videos, media_found, media_missing, missing (the first few paths), qtypes}}.
    A video's media is found when its path exists (a file, or a folder of frames)."""
    paths = {v.video_id: v.path for v in index.videos}
    exists: dict[str, bool] = {}
    report = {}
    for split in _splits(index):
        questions = index.qa.get(split, [])
        ids = list(dict.fromkeys(q.video_id for q in questions)) if split in index.qa else \
            [v.video_id for v in index.videos if v.split == split]
        for video_id in ids:
            if video_id not in exists:
                exists[video_id] = Path(paths[video_id]).exists()
        missing = [paths[i] for i in ids if not exists[i]]
        report[split] = {
            "questions": len(questions), "videos": len(ids),
            "media_found": len(ids) - len(missing), "media_missing": len(missing),
            "missing": missing[:SHOW_MISSING],
            "qtypes": dict(Counter(q.qtype or "(none)" for q in questions).most_common()),
        }
    return report


COUNTS = ("questions", "videos", "media_found", "media_missing")


def summary(name: str, report: dict[str, dict]) -> dict:
    """The one-line JSON `make data` ends with: the counts per split."""
    return {"dataset": name, "splits": {s: {k: r[k] for k in COUNTS} for s, r in report.items()}}


def describe(name: str, report: dict[str, dict]) -> list[str]:
    """Human-readable lines, one block per split."""
    lines = [f"dataset {name}"]
    for split, r in report.items():
        lines.append(f"{split}: {r['questions']} questions, {r['videos']} videos; media: "
                     f"{r['media_found']} found, {r['media_missing']} missing")
        lines += [f"  missing: {p}" for p in r["missing"]]
        if r["media_missing"] > len(r["missing"]):
            lines.append(f"  ... and {r['media_missing'] - len(r['missing'])} more missing")
        if r["qtypes"]:
            lines.append("  question types: " + ", ".join(f"{t} {n}" for t, n in r["qtypes"].items()))
    return lines
