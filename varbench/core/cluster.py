"""Where this process sits in a cluster job: torchrun ranks and SLURM array/srun tasks.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK: varbench then joins the default
torch.distributed process group (NCCL when CUDA is available, gloo otherwise), each rank
generates its shard on ``cuda:LOCAL_RANK`` (or the CPU), feature extraction of the finished
points is split by chunk across ranks, and rank 0 scores after a barrier.

SLURM arrays need no rendezvous: ``--shard auto`` makes array task ``a`` of ``A`` with srun
task ``p`` of ``P`` shard ``a * P + p`` of ``A * P``; every shard runs independently and
whichever finishes last scores (locks keep that to one process).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

from varbench.errors import UsageError


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    value = env.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--shard auto: ${key}={value!r} is not an integer") from None


def shard_from_slurm(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from SLURM array and srun variables; an error outside SLURM."""
    env = os.environ if env is None else env
    task_id = _int(env, "SLURM_ARRAY_TASK_ID")
    procid, ntasks = _int(env, "SLURM_PROCID", 0), _int(env, "SLURM_NTASKS", 1)
    if task_id is None and "SLURM_PROCID" not in env:
        raise UsageError(
            "--shard auto: neither SLURM_ARRAY_TASK_ID nor SLURM_PROCID is set (not inside a "
            "SLURM array job or srun step); give --shard INDEX/COUNT instead"
        )
    if task_id is None:
        index, count = procid, ntasks
    else:
        first = _int(env, "SLURM_ARRAY_TASK_MIN", 0)
        array_count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        if array_count is None:
            last = _int(env, "SLURM_ARRAY_TASK_MAX")
            if last is None:
                raise UsageError("--shard auto: SLURM_ARRAY_TASK_COUNT is not set")
            array_count = last - first + 1
        index, count = (task_id - first) * ntasks + procid, array_count * ntasks
    if not (0 <= index < count):
        raise UsageError(
            f"--shard auto: SLURM variables give shard {index}/{count}; arrays must be "
            "contiguous (e.g. --array=0-7), or give --shard INDEX/COUNT"
        )
    return index, count


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def torchrun_ranks(env: Mapping[str, str] | None = None) -> Ranks:
    """RANK/WORLD_SIZE/LOCAL_RANK as torchrun sets them; joins the process group if > 1."""
    env = os.environ if env is None else env
    world = _int(env, "WORLD_SIZE", 1) or 1
    if world <= 1:
        return Ranks()
    ranks = Ranks(_int(env, "RANK", 0) or 0, world, _int(env, "LOCAL_RANK", 0) or 0)
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Scoring on rank 0 can take hours at ImageNet scale; barriers must not time out first.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=48))
    return ranks


def rank_device(device: str, ranks: Ranks) -> str:
    """``cuda`` (or auto on a GPU machine) becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if ranks.distributed and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device
