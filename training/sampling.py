"""Samplers whose output is a pure function of (seed, epoch): the key to exact resumption.

The training sampler yields `(index, sample_seed)`; the dataset draws that sample's
augmentation from `sample_seed` alone. So the order and every crop of epoch e are the same
whether the run was resumed, how many loader workers there are, and (with torchrun) how the
data is split across processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from training.seed import derive_seed


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This process's share of `indices`, padded by wrapping so every process gets as many."""
    per_rank = math.ceil(len(indices) / world_size)
    padded = indices + indices[: per_rank * world_size - len(indices)]
    return padded[rank::world_size]


class EpochSampler(Sampler):
    """Shuffled (or sequential) indices for one epoch, optionally with per-sample seeds."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        with_seeds: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.with_seeds = with_seeds
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        mine = shard(order, self.rank, self.world_size)
        if not self.with_seeds:
            return iter(mine)
        sample_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        return iter([(index, sample_seeds[index]) for index in mine])
