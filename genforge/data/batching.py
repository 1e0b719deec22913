"""In-memory batching that is deterministic in (seed, step), so resumed runs are exact."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch


SPLIT_SEED = 1234  # validation/test carving is fixed, independent of the training seed


def carve(n: int, fraction: float, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed split of range(n) into (rest, carved) index sets."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * fraction))
    return perm[k:], perm[:k]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, stream)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))
    return g


class ShuffledBatches:
    """Infinite batches over in-memory tensors: epoch e uses a permutation seeded by
    (seed, e); step s takes slice s mod steps_per_epoch. `transform(batch, gen)` gets a
    per-step generator (augmentation). The last partial batch of an epoch is dropped."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int,
                 start_step: int = 0,
                 transform: Callable[[tuple, torch.Generator], tuple] | None = None):
        self.tensors = tensors
        self.n = len(tensors[0])
        self.batch_size = min(batch_size, self.n)
        self.seed = seed
        self.step = start_step
        self.transform = transform
        self.steps_per_epoch = max(1, self.n // self.batch_size)
        self._epoch, self._perm = -1, None

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        epoch, i = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=step_generator(self.seed, epoch, 1))
            self._epoch = epoch
        idx = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        batch = tuple(t[idx] for t in self.tensors)
        if self.transform is not None:
            batch = self.transform(batch, step_generator(self.seed, self.step, 2))
        self.step += 1
        return batch


def sequential_batches(tensors: tuple[torch.Tensor, ...], batch_size: int,
                       limit_batches: int = 0) -> Iterator[tuple]:
    n = len(tensors[0])
    nb = math.ceil(n / batch_size)
    if limit_batches:
        nb = min(nb, limit_batches)
    for i in range(nb):
        yield tuple(t[i * batch_size:(i + 1) * batch_size] for t in tensors)
