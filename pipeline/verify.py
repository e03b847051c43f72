"""`make verify`: a store checked against its own manifest, markers and checksums.

What the reader trusts is checked: every shard the manifest (shards.jsonl) plans is on disk
with a marker, no shard is on disk that the manifest does not plan, every marker field the
reader uses agrees with the shard's place, the manifest, the store's registry and the group's
attributes, and every array reads back with its marker's shape, dtype and sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.store import MANIFEST, MARKER, marker_problems, read_marker, read_store_meta, registry, verify_shard


@dataclass
class Verdict:
    """What `verify_store` found: shard relpath -> problems (none: the store verifies)."""

    checked: int = 0
    ok: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, rel: str, problems: list[str]) -> None:
        if problems:
            self.problems.setdefault(rel, []).extend(problems)


def planned_shards(root: Path) -> tuple[dict[str, tuple[str, ...]] | None, list[str]]:
    """{relpath: video ids} the manifest plans (None for a store from before the manifest), and
    notes on lines that do not parse (a torn last line is a crash mid-append: a note, no more)."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None, [f"no {MANIFEST} (a store from before the manifest): only the shards on disk are checked"]
    planned, notes = {}, []
    lines = path.read_text(errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            planned[f"{row['split']}/{row['shard_id']}.zarr"] = tuple(row["video_ids"])
        except (ValueError, KeyError, TypeError):
            notes.append(f"{MANIFEST} line {n} is not a shard record" + (" (torn last line)" if n == len(lines) else ""))
    return planned, notes


def verify_store(root: Path, progress=lambda items: items) -> Verdict:
    """Check the store at ``root`` (see the module docstring); reads every shard in full."""
    root = Path(root)
    hashes = registry(read_store_meta(root))
    planned, notes = planned_shards(root)
    verdict = Verdict(notes=notes)
    on_disk = {f"{p.parent.name}/{p.name}": p for p in sorted(root.glob("*/*.zarr"))}
    for rel in sorted(set(planned or {}) - set(on_disk)):
        verdict.add(rel, [f"planned in {MANIFEST} but not on disk: its {len(planned[rel])} videos are missing from "
                          f"the store; `make extract` with the same dataset writes it again"])
    for rel, shard_dir in progress(sorted(on_disk.items())):
        verdict.checked += 1
        marker = read_marker(shard_dir)
        if marker is None:
            verdict.add(rel, [f"no readable {MARKER}: readers skip it"])
            continue
        if planned is not None and rel not in planned:
            verdict.add(rel, [f"not planned in {MANIFEST}: a shard copied in or a manifest cut short"])
        ids = planned.get(rel) if planned is not None else None
        verdict.add(rel, marker_problems(shard_dir, marker, hashes=hashes, video_ids=ids))
        verdict.add(rel, verify_shard(shard_dir))
        verdict.ok += rel not in verdict.problems
    return verdict
