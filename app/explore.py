"""What the Explore tab shows of a store, read-only: its report, every video's status and why,
one video's stored modalities, and an eval predictions file's questions of that video.

Everything here reads through core.store (valid shards only, as the trainer sees them) plus the
store's own failures.jsonl and report.json; nothing writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.modalities import FRAME, NAMES, kind
from core.store import FAILURES, FeatureStore, collect_markers, read_store_meta, registry

TABLE_COLUMNS = ["video_id", "split", "status", "reason"]


def read_failures(root: Path) -> list[dict]:
    """Rows of the store's failures.jsonl (a torn last line is skipped, not fatal)."""
    path = Path(root) / FAILURES
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def report_markdown(root: Path) -> str:
    """The store's report as markdown: counts, failures by stage, time per stage, modalities."""
    path = Path(root) / "report.json"
    if not path.exists():
        return f"**{root}**: no report.json (the extraction never finished a run here)"
    r = json.loads(path.read_text())
    run = r.get("run", {})
    lines = [f"### {r['dataset']} — `{r['store']}` (config `{r['config_hash']}`)", "",
             "| videos | ok | failed | missing a modality | pending | shards done |", "|---:|---:|---:|---:|---:|---:|",
             f"| {r['videos_total']} | {r['videos_ok']} | {r['videos_failed']} | {r['videos_partial']} | "
             f"{r['videos_pending']} | {r['shards_done']}/{r['shards_total']} |", ""]
    by_stage = r.get("failures", {}).get("by_stage", {})
    if by_stage:
        lines += ["**Failures by stage:** " + ", ".join(f"{k}: {v}" for k, v in sorted(by_stage.items())), ""]
    stages = run.get("stage_seconds") or {}
    if stages:
        lines += ["**Time per stage (s, summed over the shards of the last run):** "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), ""]
    lines += ["| modality | videos | dtype | shape |", "|---|---:|---|---|"]
    lines += [f"| {k} | {v['videos']} | {v['dtype']} | {tuple(v['shape'])} |" for k, v in r.get("modalities", {}).items()]
    return "\n".join(lines)


def video_table(root: Path) -> list[list[str]]:
    """[video_id, split, status, reason] for every video the store knows: ok, failed (with the
    stage and reason), or ok but missing modalities (which, and why)."""
    root = Path(root)
    markers = collect_markers(root, hashes=registry(read_store_meta(root)))
    rows: dict[str, list[str]] = {}
    split_of: dict[str, str] = {}
    for rel, marker in markers.items():
        split = rel.split("/")[0]
        split_of.update({vid: split for vid in marker.get("video_ids", [])})
        for vid in marker["ok"]:
            rows[vid] = [vid, split, "ok", ""]
    for f in read_failures(root):
        vid = f["video_id"]
        why = f"[{f.get('stage', '?')}] {f.get('reason', '')}"
        if f.get("fatal", True):
            rows[vid] = [vid, split_of.get(vid, f.get("split", "")), "failed", why]
        elif vid in rows:
            row = rows[vid]
            row[2] = "missing modality"
            row[3] = f"{row[3]}; {why}" if row[3] else why
    return sorted(rows.values())


def filter_table(rows: list[list[str]], text: str = "", status: str = "all") -> list[list[str]]:
    """Rows whose id or reason contains `text` (case-insensitive) and whose status is `status`."""
    text = (text or "").strip().lower()
    return [r for r in rows if (status in ("all", None, "") or r[2] == status)
            and (not text or text in r[0].lower() or text in r[3].lower())]


def modality_stats(arr: np.ndarray) -> dict:
    """Numbers that tell a blank or broken modality at a glance."""
    a = np.asarray(arr, dtype=np.float32)
    return {"shape": list(a.shape), "mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
            "zeros": round(float((a == 0).mean()), 4), "finite": bool(np.isfinite(a).all()),
            "blank": bool(a.size == 0 or float(a.std()) < 1e-6)}


def stored_modalities(store: FeatureStore, video_id: str) -> dict[str, np.ndarray]:
    """{store key: array} of every modality stored for the video (missing ones left out)."""
    out = {}
    for m in NAMES:
        if m in store.modalities and store.has(video_id, m):
            out[m] = np.asarray(store.get(video_id, m))
            if kind(m) == "points":
                out["pointcloud_xyz"] = np.asarray(store.get(video_id, "pointcloud_xyz"))
    return out


def raw_maps(store: FeatureStore, video_id: str) -> dict[str, np.ndarray]:
    """Raw derived maps stored for the video (store.raw_maps=true runs only)."""
    out = {}
    for name in FRAME:
        try:
            out[name] = np.asarray(store.raw_map(video_id, name))
        except KeyError:
            continue
    return out


def video_failure(root: Path, video_id: str) -> list[dict]:
    """The failures.jsonl rows of one video."""
    return [f for f in read_failures(root) if f["video_id"] == video_id]


def eval_rows(path: Path, qa_videos: dict[str, str], video_id: str, *, qtype: str = "all",
              correct: str = "all") -> list[list]:
    """[qid, qtype, prediction, answer, right] of the video's questions in an eval file's first
    result (all modalities), filtered by question type and right/wrong."""
    data = json.loads(Path(path).read_text())
    if not data.get("results"):
        return []
    out = []
    for r in data["results"][0]["rows"]:
        if qa_videos.get(r["qid"]) != video_id:
            continue
        right = bool(r.get("strict"))
        if qtype not in ("all", "", None) and r["qtype"] != qtype:
            continue
        if correct == "right" and not right or correct == "wrong" and right:
            continue
        out.append([r["qid"], r["qtype"], r["prediction"], r["answer"], "right" if right else "wrong"])
    return out
