"""The shell blocks of README.md and docs/training.md marked `<!-- runnable -->` run as written,
in order, in a fresh checkout (issue 27): the docs cannot drift from the code.

The checkout is a scratch folder linking the repository's files but not its outputs/ or data/,
so the blocks start from nothing (the demo is generated, stores are new) and touch nothing of
the developer's. Extraction joins the session's Ray (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/training.md"]
MARKER = "<!-- runnable -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```(?:bash|sh)?\n(.*?)```", re.S)


def runnable_commands(text: str) -> list[str]:
    """The command lines of every block marked runnable, in order (comments and blank lines dropped)."""
    lines = []
    for block in BLOCK.findall(text):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def test_the_marker_finds_blocks_and_only_marked_ones():
    text = f"x\n{MARKER}\n```bash\nmake a   # why\n\nmake b\n```\n```bash\nmake c\n```\n{MARKER}\n```\nmake d\n```\n"
    assert runnable_commands(text) == ["make a   # why", "make b", "make d"]
    assert all(runnable_commands((ROOT / doc).read_text()) for doc in DOCS)  # each doc has some


def fresh_checkout(tmp_path: Path) -> Path:
    scratch = tmp_path / "checkout"
    scratch.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("outputs", "data", ".git", "bench") and not entry.name.startswith(".pytest"):
            (scratch / entry.name).symlink_to(entry)
    (scratch / "bench").mkdir()  # bench/results may be written by a block: a copy, not the repo's
    return scratch


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_runnable_blocks_run_as_written(doc, tmp_path):
    scratch = fresh_checkout(tmp_path)
    for command in runnable_commands((ROOT / doc).read_text()):
        run = subprocess.run(["bash", "-c", command], cwd=scratch, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{doc}: `{command}` exited {run.returncode}:\n{(run.stdout + run.stderr)[-3000:]}"
