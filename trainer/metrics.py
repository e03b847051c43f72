"""Answer scoring. Two numbers, always both, always labelled:

- `strict`: exact match. Multiple choice: the predicted option is the answer. Open-ended: the
  prediction equals the answer after lower-casing and collapsing whitespace.
- `lenient`: the reference's score (its GQA-style task used for MUSIC-AVQA and SQA3D): a
  prediction that is a digit 1-10 becomes its word, and a prediction that is a SUBSTRING of the
  answer counts as correct ("guitar" for "acoustic guitar", "in" for "indoor"). An empty
  prediction becomes "unanswerable" first, as in the reference, so it never matches by accident.
  For multiple choice it equals `strict`.
"""

from __future__ import annotations

from collections import defaultdict

NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
                "8": "eight", "9": "nine", "10": "ten"}


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def strict_match(prediction: str, answer: str) -> bool:
    return _norm(prediction) == _norm(answer)


def lenient_match(prediction: str, answer: str) -> bool:
    pred = prediction.strip() or "unanswerable"
    pred = NUMBER_WORDS.get(pred, pred)
    return pred == answer.strip() or pred in answer


def score(prediction: dict, answer: str, answer_idx: int) -> dict:
    """prediction: {"choice", "text"} from Crema.predict -> {"strict": 0/1, "lenient": 0/1}."""
    if answer_idx >= 0:
        ok = int(prediction["choice"] == answer_idx)
        return {"strict": ok, "lenient": ok}
    return {"strict": int(strict_match(prediction["text"], answer)),
            "lenient": int(lenient_match(prediction["text"], answer))}


def summarize(rows: list[dict]) -> dict:
    """rows: {"qtype", "strict", "lenient", ...} -> accuracies in %, overall and per question type."""
    def acc(rs: list[dict]) -> dict:
        n = len(rs)
        return {"n": n, "strict": 100.0 * sum(r["strict"] for r in rs) / max(n, 1),
                "lenient": 100.0 * sum(r["lenient"] for r in rs) / max(n, 1)}

    by_type = defaultdict(list)
    for r in rows:
        by_type[r["qtype"] or "all"].append(r)
    return {**acc(rows), "by_qtype": {t: acc(rs) for t, rs in sorted(by_type.items())}}


def chance_level(rows: list[dict]) -> float | None:
    """Expected strict accuracy (%) of guessing uniformly among the options (multiple choice only)."""
    counts = [r["num_options"] for r in rows if r.get("num_options")]
    if not counts or len(counts) != len(rows):
        return None
    return 100.0 * sum(1.0 / n for n in counts) / len(counts)


def qtype_table(summary: dict, title: str) -> str:
    """A Markdown table of accuracy per question type (strict exact match and lenient)."""
    lines = [f"### {title}", "", "| question type | n | strict EM % | lenient (reference) % |", "|---|---:|---:|---:|"]
    for t, a in summary["by_qtype"].items():
        lines.append(f"| {t} | {a['n']} | {a['strict']:.1f} | {a['lenient']:.1f} |")
    lines.append(f"| **all** | {summary['n']} | {summary['strict']:.1f} | {summary['lenient']:.1f} |")
    return "\n".join(lines)
