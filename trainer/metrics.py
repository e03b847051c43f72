"""Answer scoring. Two numbers, always both, always labelled:

- `strict`: exact match. Multiple choice: the predicted option is the answer. Open-ended: the
  prediction equals the answer after lower-casing and collapsing whitespace.
- `lenient` (shown as "reference"): the dataset's own scorer in the reference
  (`dataset.scoring.reference`, lavis/tasks/vqa.py), exactly:
  - `choice` (NExT-QA, Touch-QA, Thermal-QA): the predicted option is the answer (= strict);
  - `gqa` (MUSIC-AVQA, the reference's GQA task): a prediction that is a digit 1-10 becomes its
    word; a prediction that is a substring of the answer becomes the answer ("guitar" for
    "acoustic guitar", "in" for "indoor"); then exact equality;
  - `sqa3d`: remove ",", "<pad>", "</s>", strip, keep the first line, lower-case; when the answer
    is one word keep the prediction's LAST word; a digit 1-10 becomes its word; correct when the
    prediction is a substring of the answer.
  Both open-ended scorers see an empty prediction as "unanswerable" first, as the reference's
  predict_answers returns it, so it never matches by accident.

Question types are reported as they are, and grouped when the dataset says how
(`dataset.scoring.groups`: NExT-QA's C/T/D prefixes -> Causal / Temporal / Descriptive).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
                "8": "eight", "9": "nine", "10": "ten"}


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def strict_match(prediction: str, answer: str) -> bool:
    """Exact match after lower-casing and collapsing whitespace."""
    return _norm(prediction) == _norm(answer)


def gqa_match(prediction: str, answer: str) -> bool:
    """The reference's GQA task (MUSIC-AVQA): digit -> word, substring -> the answer, then equality."""
    pred = prediction or "unanswerable"
    pred = NUMBER_WORDS.get(pred, pred)
    if pred in answer:
        pred = answer
    return pred == answer


def sqa3d_match(prediction: str, answer: str) -> bool:
    """The reference's SQA3D task: cleaned, lower-cased prediction, last word for one-word
    answers, digit -> word, then a substring test against the answer as written."""
    pred = prediction or "unanswerable"
    pred = pred.replace(",", "").replace("<pad>", "").replace("</s>", "").strip()
    pred = pred.strip().split("\n")[0].lower()
    if len(answer.split(" ")) == 1:
        pred = pred.split(" ")[-1]
    pred = NUMBER_WORDS.get(pred, pred)
    return pred in answer


OPEN_ENDED: dict[str, Callable[[str, str], bool]] = {"gqa": gqa_match, "sqa3d": sqa3d_match}
SCORERS = ("choice", *OPEN_ENDED)


@dataclass(frozen=True)
class Scoring:
    """`dataset.scoring`: the reference's scorer and the report's question-type groups."""

    reference: str = "gqa"
    groups: dict = field(default_factory=dict)   # qtype prefix -> group name

    def __post_init__(self) -> None:
        if self.reference not in SCORERS:
            raise ValueError(f"dataset.scoring.reference={self.reference!r}: choose from {list(SCORERS)}")

    @classmethod
    def from_dataset(cls, dataset: Mapping) -> "Scoring":
        """From a dataset config node; a dataset without `scoring` gets the defaults."""
        node = dict(dataset.get("scoring") or {})
        return cls(reference=node.get("reference", "gqa"), groups=dict(node.get("groups") or {}))

    def group(self, qtype: str) -> str | None:
        """The group of a question type: the longest configured prefix it starts with."""
        hits = [p for p in self.groups if str(qtype).startswith(p)]
        return self.groups[max(hits, key=len)] if hits else None


def score(prediction: dict, answer: str, answer_idx: int, scoring: Scoring | None = None) -> dict:
    """prediction: {"choice", "text"} from Crema.predict -> {"strict": 0/1, "lenient": 0/1}."""
    if answer_idx >= 0:
        ok = int(prediction["choice"] == answer_idx)
        return {"strict": ok, "lenient": ok}
    match = OPEN_ENDED.get((scoring or Scoring()).reference, gqa_match)
    return {"strict": int(strict_match(prediction["text"], answer)),
            "lenient": int(match(prediction["text"], answer))}


def _accuracy(rows: list[dict]) -> dict:
    n = len(rows)
    return {"n": n, "strict": 100.0 * sum(r["strict"] for r in rows) / max(n, 1),
            "lenient": 100.0 * sum(r["lenient"] for r in rows) / max(n, 1)}


def summarize(rows: list[dict], scoring: Scoring | None = None) -> dict:
    """rows: {"qtype", "strict", "lenient", ...} -> accuracies in %, overall, per question type
    and per group of types (when `scoring.groups` names any)."""
    by_type, by_group = defaultdict(list), defaultdict(list)
    for r in rows:
        by_type[r["qtype"] or "all"].append(r)
        group = scoring.group(r["qtype"] or "") if scoring else None
        if group:
            by_group[group].append(r)
    order = list(dict.fromkeys((scoring.groups if scoring else {}).values()))
    return {**_accuracy(rows), "by_qtype": {t: _accuracy(rs) for t, rs in sorted(by_type.items())},
            "by_group": {g: _accuracy(by_group[g]) for g in order if g in by_group},
            "scorer": (scoring or Scoring()).reference}


def chance_level(rows: list[dict]) -> float | None:
    """Expected strict accuracy (%) of guessing uniformly among the options (multiple choice only)."""
    counts = [r["num_options"] for r in rows if r.get("num_options")]
    if not counts or len(counts) != len(rows):
        return None
    return 100.0 * sum(1.0 / n for n in counts) / len(counts)


def qtype_table(summary: dict, title: str) -> str:
    """A Markdown table of accuracy per question type (strict exact match and the reference's
    scorer), then per group of types when the summary has groups."""
    label = f"reference ({summary.get('scorer', 'gqa')}) %"
    lines = [f"### {title}", "", f"| question type | n | strict EM % | {label} |", "|---|---:|---:|---:|"]
    for t, a in summary["by_qtype"].items():
        lines.append(f"| {t} | {a['n']} | {a['strict']:.1f} | {a['lenient']:.1f} |")
    for g, a in summary.get("by_group", {}).items():
        lines.append(f"| *{g}* | {a['n']} | {a['strict']:.1f} | {a['lenient']:.1f} |")
    lines.append(f"| **all** | {summary['n']} | {summary['strict']:.1f} | {summary['lenient']:.1f} |")
    return "\n".join(lines)
