# make submit / make submit-train   (run: python scripts/submit.py <ray> job submit --address URL [flags] -- <entrypoint...>)
"""`ray job submit`, with an exit status that says whether the job SUCCEEDED.

`ray job submit` (Ray 2.60) tails the job's logs and exits 1 only when the job FAILED: a job that
was STOPPED (`ray job stop`, a dashboard click, the cluster going away mid-job) exits 0, so a script
or a Slurm/CI step running `make submit` would go on to train on a partial store. This wrapper gives
the job a submission id when the flags name none (printed first, so `ray job status/logs/stop` can
find it), runs the command unchanged, then asks the job server for the final status and exits 1
unless it is SUCCEEDED. With `--no-wait` it returns at once, as `ray job submit` does. The same
wrapper serves extraction and training (an entry point that runs scripts/train_ray.py): only the
job id's prefix and the advice after a failure differ.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in args, else None."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


# What a job that did not succeed leaves behind, and how to go on, per kind of job.
AFTER_FAILURE = {
    "extract": "The store keeps every shard the job finished; `make submit` again with the same OUT extracts the rest.",
    "train": "The run folder keeps its checkpoints; `make submit-train` again with the same RUN_DIR resumes from "
             "checkpoints/last.",
}


def kind(argv: list[str]) -> str:
    """"train" when the entry point (after ``--``) runs scripts/train_ray.py, else "extract"."""
    entry = argv[argv.index("--") + 1:] if "--" in argv else []
    return "train" if any(a.endswith("train_ray.py") for a in entry) else "extract"


def prepare(argv: list[str]) -> tuple[list[str], str, str | None, bool]:
    """(the command, its submission id, the --address given, --no-wait?) from ``ray job submit ...``
    argv; a submission id is added after ``submit`` when the flags before ``--`` name none."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head = argv[:cut]
    if "submit" not in head:
        raise SystemExit("usage: submit.py <ray> job submit [flags] -- <entrypoint ...>")
    sid = _flag(head, "--submission-id")
    cmd = list(argv)
    if sid is None:
        sid = f"crema-{kind(argv)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        cmd.insert(head.index("submit") + 1, f"--submission-id={sid}")
    return cmd, sid, _flag(head, "--address"), "--no-wait" in head


def final_status(address: str | None, sid: str, timeout_s: float = 60.0) -> str:
    """The job's status once it is no longer PENDING/RUNNING (the server may lag the log tail)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(sid)
        if status.is_terminal() or time.monotonic() > deadline:
            return str(status.value if isinstance(status, JobStatus) else status)
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    cmd, sid, address, no_wait = prepare(argv)
    print(f"submit: job id {sid} (ray job status / logs / stop {sid})", flush=True)
    rc = subprocess.call(cmd)
    if rc != 0 or no_wait:
        return rc
    try:
        status = final_status(address, sid)
    except Exception as exc:  # the server went away with the job: that is not a success either
        print(f"submit: error: could not read the status of job {sid} ({exc}); check `ray job status {sid}`",
              file=sys.stderr)
        return 1
    if status != "SUCCEEDED":
        why = ("stopped by `ray job stop`, the dashboard or the cluster" if status == "STOPPED"
               else f"the log tail ended but the job server still says {status}; see `ray job status {sid}`")
        print(f"submit: error: job {sid} ended {status}, not SUCCEEDED ({why}). {AFTER_FAILURE[kind(argv)]}",
              file=sys.stderr)
        return 1
    print(f"submit: job {sid} SUCCEEDED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
