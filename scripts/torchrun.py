# make train NPROC=2   == python scripts/torchrun.py --nproc_per_node=2 --standalone scripts/train.py ...
"""torchrun (the same arguments as `python -m torch.distributed.run`), ending a run whose training
process failed with one `error:` line and that process's exit code instead of torchrun's own
traceback: the failing rank has already printed its `error:` line (scripts/train.py), and a user
error (exit code 2 to 5, docs/training.md) is no crash of the launcher."""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with `argv`; 0, or the exit code of the first training process that failed."""
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 1  # a signal shows as a negative code
        print(f"error: training process rank {rank} failed first (exit code {failure.exitcode}); its message is "
              f"above, and torchrun stopped the other ranks", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
