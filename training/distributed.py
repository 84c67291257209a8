"""Several processes with torchrun: DistributedDataParallel, rank 0 writes, results gathered.

`torchrun --nproc_per_node=N main_train.py` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them everything here is a no-op and training is a plain single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistContext:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    context = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return context


def shutdown_distributed(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_object(value, context: DistContext):
    """Rank 0's `value` on every rank (e.g. the run folder name it chose)."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_across(values: list[float], context: DistContext) -> list[float]:
    """Element-wise sum of `values` over all processes."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_rows(
    indices: np.ndarray, rows: np.ndarray, num_rows: int, context: DistContext
) -> np.ndarray:
    """Assemble (num_rows, ...) from each process's (index, row) pairs, in index order.

    Each row index must be covered at least once; the copies that padding creates when the
    data does not split evenly are identical and simply overwrite each other.
    """
    parts = [(indices, rows)]
    if context.enabled:
        parts = [None] * context.world_size
        dist.all_gather_object(parts, (indices, rows))
    full = np.zeros((num_rows, *rows.shape[1:]), dtype=rows.dtype)
    seen = np.zeros(num_rows, dtype=bool)
    for part_indices, part_rows in parts:
        full[part_indices] = part_rows
        seen[part_indices] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {num_rows} rows were predicted by no process")
    return full
