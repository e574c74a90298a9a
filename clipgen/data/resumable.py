"""A sampler that can start an epoch part-way through, so a resumed run continues on the samples
it had not seen yet instead of starting its epoch over."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """A permutation of `length` indices per epoch, drawn from (seed, epoch), split across
    `world_size` ranks (every rank gets the same number of samples; the remainder is dropped).
    `resume(epoch, batches)` makes the iteration of that epoch skip its first `batches` batches.

    `len()` stays the full per-rank length, as the trainer counts batches of a resumed epoch from
    where it stopped."""

    def __init__(self, length: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if length < world_size:
            raise ValueError(f"{length} samples cannot be split across {world_size} ranks")
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Skip the first `batches` batches of `epoch` (once)."""
        self._resume = (epoch, batches)

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        mine = order[self.rank::self.world_size][: len(self)]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1] * self.batch_size
            self._resume = None
        return iter(mine[start:].tolist())
