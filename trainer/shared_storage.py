# python -m trainer.shared_storage mark --store <store> --run-dir <run_dir>    (prints: <token> <store digest>)
# python -m trainer.shared_storage check --store <store> --run-dir <run_dir> --token <token> --store-digest <digest>
#   scripts/slurm_train.sbatch marks on the batch node and checks on every node (srun); trainer/ray_launch.py
#   calls mark() on the driver and check() in a Ray task per node.
"""Whether this node sees the SAME feature store and run folder as the node that launched training.

Training on several nodes reads one store and writes one run folder (checkpoints, metrics.jsonl):
both must be on storage that every node mounts at the same path. A node with a local folder of
the same name would train on other features or write checkpoints nobody resumes from, so the
launcher leaves a token file in the run folder (`mark`) and records the digest of the store's
store.json; every node then checks that it reads both back (`check`), and the launcher stops
with an `error:` line per node that does not.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import socket
import sys
from pathlib import Path

from core.store import STORE_META

TOKEN_PREFIX = ".crema-shared-"


class SharedStorageError(RuntimeError):
    """A node does not see the store or the run folder the launching node sees."""

    exit_code = 2


def store_digest(store: Path) -> str:
    """sha256 of the store's store.json: what identifies the store a node reads."""
    path = Path(store) / STORE_META
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SharedStorageError(f"no feature store at {store} ({STORE_META}: {exc.strerror}); run the "
                                 "extraction into it first, or point out=/store= at it") from exc


def mark(run_dir: Path) -> str:
    """Create run_dir and leave a fresh token file in it; returns the token."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        (run_dir / f"{TOKEN_PREFIX}{token}").write_text(token + "\n")
    except OSError as exc:
        raise SharedStorageError(f"cannot write the run folder {run_dir} ({exc.strerror}); give run_dir= "
                                 "a writable folder on storage every node mounts") from exc
    return token


def unmark(run_dir: Path, token: str) -> None:
    """Remove the token file `mark` left."""
    (Path(run_dir) / f"{TOKEN_PREFIX}{token}").unlink(missing_ok=True)


def check(store: Path, run_dir: Path, token: str, digest: str) -> list[str]:
    """Problems this node has with the store and the run folder (empty: it sees both)."""
    host = socket.gethostname()
    problems = []
    try:
        mine = store_digest(store)
    except SharedStorageError:
        problems.append(f"node {host} cannot see the feature store {store} ({STORE_META} missing there)")
    else:
        if mine != digest:
            problems.append(f"node {host} sees another feature store at {store} (its {STORE_META} differs "
                            "from the launching node's)")
    seen = Path(run_dir) / f"{TOKEN_PREFIX}{token}"
    try:
        ok = seen.read_text().strip() == token
    except OSError:
        ok = False
    if not ok:
        problems.append(f"node {host} does not see the launching node's run folder {run_dir} "
                        f"({seen.name} missing there)")
    return problems


def advice() -> str:
    return ("the store and run_dir must be on storage every node mounts at the same path (NFS, Lustre, "
            "a shared volume); see docs/training.md, On a cluster")


def main(argv: list[str] | None = None) -> int:
    """`mark` (the launching node: prints the token and the store's digest) or `check` (each node)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["mark", "check"])
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--token", help="check: the token `mark` printed")
    ap.add_argument("--store-digest", help="check: the digest `mark` printed")
    args = ap.parse_args(argv)
    if args.action == "mark":
        try:
            print(mark(args.run_dir), store_digest(args.store))
        except SharedStorageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0
    if not (args.token and args.store_digest):
        ap.error("check needs --token and --store-digest (from `mark`)")
    problems = check(args.store, args.run_dir, args.token, args.store_digest)
    for problem in problems:
        print(f"error: {problem}; {advice()}", file=sys.stderr)
    return SharedStorageError.exit_code if problems else 0


if __name__ == "__main__":
    sys.exit(main())
