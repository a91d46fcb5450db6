"""Garbage collection policy of the scoring consumer (see ``GcPolicy``)."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 100_000


class GcPauseLog:
    """Logs garbage collections that stop the process long enough to show in latency."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        if took >= self.threshold_s:
            log.warning(
                "garbage collection of generation %d took %.0f ms (%d objects collected)",
                info.get("generation", -1),
                took * 1000,
                info.get("collected", 0),
            )


class GcPolicy:
    """Keeps Python's cyclic garbage collector off the consumer's long-lived state.

    Reference counting frees what a batch allocates. What outlives a batch is state (feature
    engines, label heaps, clients) that the collector otherwise traversed again at every young
    and middle collection: 4-15 ms young and ~55 ms middle collections, 7-9 % of the busy time
    at 10k transactions/s. So after each batch the young generation (what this batch left) is
    collected and the survivors are frozen (``gc.freeze`` moves them out of the generations;
    O(1)): a collection never scans the same object twice. Frozen objects are still freed by
    reference counting when dropped; cyclic garbage made of objects that outlived their batch
    waits for the full collection (unfreeze, collect, freeze) that runs every
    ``full_interval_s`` and at each partition assignment. Automatic collections are left on,
    with a young threshold no ordinary batch reaches.

    Use as a context manager around the loop: it restores the collector as it found it (tests
    and the bench run consumers in-process).
    """

    def __init__(
        self,
        full_interval_s: float,
        young_threshold: int = GC_YOUNG_THRESHOLD,
        clock: Any = time.monotonic,
    ) -> None:
        self.full_interval_s = full_interval_s
        self.young_threshold = young_threshold
        self._clock = clock
        self._saved: tuple[int, ...] | None = None
        self._last_full = 0.0
        self.full_collections = 0
        self.collected = 0  # objects the full collections found unreachable

    def __enter__(self) -> GcPolicy:
        self._saved = gc.get_threshold()
        # Each transaction allocates a few dozen containers that reference counting frees; at
        # the default 700 allocations per young collection the collector ran ~30 times per
        # 1000-message batch for little garbage. Young collections happen after each batch.
        gc.set_threshold(self.young_threshold, *self._saved[1:])
        self._last_full = self._clock()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
        gc.unfreeze()

    def after_batch(self) -> None:
        if self._clock() - self._last_full >= self.full_interval_s:
            self.full()
        else:
            gc.collect(0)
            gc.freeze()

    def full(self) -> int:
        """Collect everything (frozen included), then freeze what survived; returns how many
        unreachable objects were found."""
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._last_full = self._clock()
        self.full_collections += 1
        self.collected += found
        return found
