"""Counting samples that readers skip (unreadable images, text or metadata) and shards cut
short, across worker processes."""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class SkipCounter:
    """A process-shared count of skipped samples.

    The count lives in shared memory, so DataLoader workers (forked or spawned) add to the
    same number that the main process reads and logs.
    """

    def __init__(self) -> None:
        self._value = mp.Value("q", 0)
        self._shards = mp.Value("q", 0)

    def skip(self, key: str, error: BaseException) -> None:
        """Record one skipped sample and warn with its key (`shard:key` or a file) and the
        reason."""
        with self._value.get_lock():
            self._value.value += 1
            total = self._value.value
        log.warning("skipped unreadable sample %s (%s: %s); %d skipped so far",
                    key, type(error).__name__, error, total)

    def shard_error(self, error: BaseException) -> bool:
        """A shard that could not be read to its end (truncated or corrupt tar): the samples
        after the fault are lost and their number unknown. Counted apart from samples."""
        with self._value.get_lock():
            self._shards.value += 1
            total = self._shards.value
        log.warning("shard read stopped early, the rest of the shard is lost (%s: %s); "
                    "%d shard(s) cut short so far", type(error).__name__, error, total)
        return True  # webdataset handlers: go on with the next shard

    @property
    def shards_cut(self) -> int:
        return int(self._shards.value)

    @property
    def count(self) -> int:
        return int(self._value.value)


def skip_summary(datasets: Iterable[Any]) -> dict[str, int]:
    """Samples skipped and shards cut short so far, over `datasets` (those that count)."""
    counters = [d.skipped for d in datasets if isinstance(getattr(d, "skipped", None), SkipCounter)]
    return {"skipped_samples": sum(c.count for c in counters),
            "shards_cut_short": sum(c.shards_cut for c in counters)}


def describe_skips(summary: dict[str, int]) -> str:
    """One line for the end of a pass: what was skipped (see the warnings for each key)."""
    return (f"{summary['skipped_samples']} unreadable sample(s) skipped, "
            f"{summary['shards_cut_short']} shard(s) cut short"
            + (" (each named in a warning above)" if any(summary.values()) else ""))
