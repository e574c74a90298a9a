"""Counting samples that readers skip (corrupt or unreadable images) across worker processes."""

from __future__ import annotations

import logging
import multiprocessing as mp

log = logging.getLogger(__name__)


class SkipCounter:
    """A process-shared count of skipped samples.

    The count lives in shared memory, so DataLoader workers (forked or spawned) add to the
    same number that the main process reads and logs.
    """

    def __init__(self) -> None:
        self._value = mp.Value("q", 0)

    def skip(self, key: str, error: BaseException) -> None:
        """Record one skipped sample and warn with its key and the reason."""
        with self._value.get_lock():
            self._value.value += 1
            total = self._value.value
        log.warning("skipped unreadable image %s (%s: %s); %d skipped so far",
                    key, type(error).__name__, error, total)

    @property
    def count(self) -> int:
        return int(self._value.value)
