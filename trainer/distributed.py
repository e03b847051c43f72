"""The trainer's process group: one process per device, data-parallel (docs/training.md).

`setup()` takes, in order: a process group somebody already initialised (Ray Train's
TorchTrainer does that before calling the entry point), torchrun's environment (WORLD_SIZE > 1:
NCCL on CUDA, gloo on CPU), or nothing (one process, every helper a no-op). The rest of the
trainer only asks `rank()`, `world_size()`, `is_main()` and uses the collectives below, so a
single-process run executes exactly the code it always did.
"""

from __future__ import annotations

import datetime
import os
import pickle

import torch
import torch.distributed as dist

_owned = False  # whether setup() initialised the group (then teardown() destroys it)


def active() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def env_world_size() -> int:
    """The world size torchrun announces (1 without torchrun), readable before `setup()`."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_type: str = "cpu", timeout_s: int = 1800) -> None:
    """Join the data-parallel group (see the module docstring); call once per process."""
    global _owned
    if dist.is_available() and dist.is_initialized():
        return
    if env_world_size() <= 1:
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _owned = True


def local_device(device: torch.device) -> torch.device:
    """One GPU per process: torchrun's LOCAL_RANK picks it (a CPU device is returned as is)."""
    if device.type != "cuda" or not active():
        return device
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def teardown() -> None:
    """Destroy the group if `setup()` created it (a caller's own group is left to the caller)."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, metrics, curves and reports."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks in place (returned for chaining); a no-op on one process."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (picklable objects; [obj] on one process)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 only and hand its result to every rank. An exception raised there is
    raised on every rank (same type and message), so no rank waits forever in a collective
    for a rank that has left with a user error."""
    if not active():
        return fn(*args, **kwargs)
    box = [None]
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, this one included
            box[0] = ("error", _picklable(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception type that does not pickle: keep its message
        return RuntimeError(f"{type(exc).__name__}: {exc}")
