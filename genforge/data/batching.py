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


def group_by_length(perm: torch.Tensor, lengths: torch.Tensor, batch_size: int, window: int,
                    gen: torch.Generator) -> torch.Tensor:
    """Reorder one epoch's permutation so each batch holds rows of similar length: every run
    of `window` batches is sorted by length (longest first, ties in permutation order) and cut
    into batches, and the epoch's batches are then shuffled. Every row of `perm` stays, once;
    a padded batch costs its longest row, so this cuts the padding (rt-polarity, batch 32,
    window 16: 53 -> 29 positions a row). The rows batched together still vary by epoch."""
    size = window * batch_size
    chunks = [c[torch.argsort(lengths[c], descending=True, stable=True)] for c in perm.split(size)]
    order = torch.cat(chunks).view(-1, batch_size)
    return order[torch.randperm(len(order), generator=gen)].reshape(-1)


class ShuffledBatches:
    """Infinite batches over in-memory tensors: epoch e uses a permutation seeded by
    (seed, e); step s takes slice s mod steps_per_epoch. `transform(batch, gen)` gets a
    per-step generator (augmentation). The last partial batch of an epoch is dropped.
    `lengths` (one per row) with `window` > 0 batches rows of similar length together
    (`group_by_length`); the batches stay deterministic in (seed, step)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int,
                 start_step: int = 0,
                 transform: Callable[[tuple, torch.Generator], tuple] | None = None,
                 lengths: torch.Tensor | None = None, window: int = 0):
        self.tensors = tensors
        self.n = len(tensors[0])
        self.batch_size = min(batch_size, self.n)
        self.seed = seed
        self.step = start_step
        self.transform = transform
        self.steps_per_epoch = max(1, self.n // self.batch_size)
        if lengths is not None and len(lengths) != self.n:
            raise ValueError(f"lengths has {len(lengths)} entries for {self.n} rows")
        self.lengths, self.window = lengths, window
        self._epoch, self._perm = -1, None

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        epoch, i = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=step_generator(self.seed, epoch, 1))
            if self.lengths is not None and self.window > 0:
                kept = self._perm[: self.steps_per_epoch * self.batch_size]  # whole batches
                self._perm = group_by_length(kept, self.lengths, self.batch_size, self.window,
                                             step_generator(self.seed, epoch, 3))
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
