"""The run report: machine-readable `report.json` and the human summary printed at the end."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.modalities import STORE_KEYS
from core.store import FAILURES
from core.util import write_json_atomic


def build_report(*, dataset: str, root: Path, config_hash: str, shards, markers: dict, failures: list[dict],
                 run: dict) -> dict:
    """Counts over the whole store (every valid shard), plus what this run did (``run``)."""
    listed = {e.video_id for _, entries in shards for e in entries}  # this dataset's videos
    total = len(listed)
    wanted = {spec.relpath() for spec, _ in shards}
    done = {rel: m for rel, m in markers.items() if rel in wanted}
    ok = sum(1 for m in done.values() for v in m["ok"] if v in listed)
    failed = sum(1 for m in done.values() for f in m["failed"] if f["video_id"] in listed)
    partial = len({e["video_id"] for m in done.values() for e in m["errors"] if e["video_id"] in listed})
    modalities: dict[str, dict] = {}
    for m in done.values():
        for key in STORE_KEYS:
            if key in m["arrays"]:
                info = modalities.setdefault(key, {"videos": 0, "shape": m["arrays"][key]["shape"][1:],
                                                   "dtype": m["arrays"][key]["dtype"]})
                info["videos"] += sum(m["present"][key])
    return {
        "dataset": dataset, "store": str(root), "config_hash": config_hash,
        "videos_total": total, "videos_ok": ok, "videos_failed": failed, "videos_partial": partial,
        "videos_pending": total - ok - failed,
        "shards_total": len(shards), "shards_done": len(done),
        "store_shards": len(markers), "store_videos_ok": sum(len(m["ok"]) for m in markers.values()),
        "modalities": dict(sorted(modalities.items())),
        "failures": {"by_stage": dict(Counter(f["stage"] for f in failures)), "manifest": str(root / FAILURES),
                     "fatal": sum(1 for f in failures if f["fatal"]), "modality_errors": sum(1 for f in failures if not f["fatal"])},
        "run": run,
    }


def write_report(root: Path, report: dict) -> Path:
    return write_json_atomic(Path(root) / "report.json", report, indent=2, sort_keys=False, newline=True)


def summary(report: dict, failures: list[dict], max_rows: int = 10) -> str:
    """What a person reads at the end of a run."""
    r, run = report, report["run"]
    lines = [
        f"== extract {r['dataset']}: {r['videos_ok']}/{r['videos_total']} videos ok, {r['videos_failed']} failed, "
        f"{r['videos_partial']} with a missing modality; shards {r['shards_done']}/{r['shards_total']} "
        f"({run['shards_written']} written now, {run['shards_skipped']} already valid) in {run['wall_seconds']:.1f} s",
        f"   store: {r['store']}  (config {r['config_hash']})",
    ]
    for name, info in r["modalities"].items():
        lines.append(f"   {name:<15} {info['videos']:>6} videos  {info['dtype']:<8} {tuple(info['shape'])}")
    if run["stage_seconds"]:
        busy = ", ".join(f"{k} {v:.1f}s" for k, v in run["stage_seconds"].items())
        lines.append(f"   stage time (summed over shards written now): {busy}")
    if failures:
        lines.append(f"   failures ({len(failures)}, all in {r['failures']['manifest']}):")
        for f in failures[:max_rows]:
            kind = "FAILED " if f["fatal"] else "missing"
            lines.append(f"     {kind} {f['video_id']:<24} [{f['stage']}] {f['reason'][:110]}")
        if len(failures) > max_rows:
            lines.append(f"     ... {len(failures) - max_rows} more")
    return "\n".join(lines)
