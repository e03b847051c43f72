"""The store when the storage refuses (slow): a full disk and a read-only OUT on real small
filesystems (tmpfs mounts), through the real CLI. (A 255-character file name with raw maps:
tests/test_store_lifecycle_e2e.py.)

A full disk or a read-only OUT gives one `error:` line naming the path and what to do, the
summary of what the store holds, no temporaries, and exit code 3 (pipeline/errors.py). Mounting
needs root (CAP_SYS_ADMIN); where it is not allowed these tests skip and say so, and
tests/test_store_lifecycle.py still maps a real ENOSPC (from /dev/full) to the same message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from media import write_video

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def extract(folder: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts/extract.py"), "dataset=videos", f"dataset.path={folder}", f"out={out}",
           "ray.num_cpus=2", "features.decode.num_frames_stored=4", "store.shard_size=1", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}: needs root); the ENOSPC "
                    f"message is still tested with /dev/full in tests/test_store_lifecycle.py")


@pytest.fixture
def mounts(tmp_path):
    """Mount tmpfs filesystems for a test (`mount(name, size)`); unmounted in teardown."""
    done: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        mount_tmpfs(where, size)
        done.append(where)
        return where

    yield mount
    for where in reversed(done):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def fill(mnt: Path, leave: int) -> None:
    """Fill the filesystem at `mnt` until `leave` bytes are free."""
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * (free - leave))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i in range(2):
        write_video(folder / f"v{i}.mp4", step=2 + i)
    return folder


def test_a_full_disk_stops_the_run_with_one_error_line_and_exit_3(videos, mounts):
    """Issue 20 case 10: ENOSPC gave three Ray tracebacks, rc 1 (as "too many failures"), no
    `error:` line, no report, and temporaries left behind."""
    mnt = mounts("full", "1m")
    fill(mnt, leave=24 * 1024)  # room for the lease, store.json and the manifest; not for a shard
    proc = extract(videos, mnt, "features.modalities=[rgb]")
    errors = error_lines(proc)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert len(errors) == 1 and str(mnt) in errors[0] and "No space left on device" in errors[0], errors
    assert "free space there or write to another OUT" in errors[0] and "resume" in errors[0]
    assert "== extract videos: 0/2 videos ok" in proc.stdout  # what was done
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # Ray's logged copies of the error are left out
    assert temporaries(mnt) == [] and not list(mnt.glob("videos/*/*.zarr"))


def test_a_read_only_out_stops_before_anything_with_exit_3(videos, mounts):
    """Issue 20 case 10: EROFS on LOCK.json was a traceback."""
    mnt = mounts("ro", "1m")
    (mnt / "videos").mkdir()  # a store folder (e.g. a finished store on a read-only mount)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    proc = extract(videos, mnt, "features.modalities=[rgb]")
    errors = error_lines(proc)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert len(errors) == 1 and f"{mnt}/videos" in errors[0] and "read-only" in errors[0], errors
    assert "Traceback" not in proc.stderr and "store at" in proc.stdout
