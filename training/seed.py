"""Seeds: one call fixes python, numpy and torch; loader workers derive theirs from torch."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: torch seeds each worker; pass that on to python and numpy."""
    del worker_id
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def derive_seed(*parts: int) -> int:
    """A 62-bit seed that depends on every part (e.g. run seed, epoch, rank), reproducibly."""
    generator = np.random.default_rng(list(parts))
    return int(generator.integers(0, 2**62))
