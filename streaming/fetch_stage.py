"""The consumer's fetch stage: polled transactions records in, entries to score and dead letters
out, each partition's feature state advanced in offset order.

``Intake.parse`` decodes and validates the records of a batch; ``Intake.featurise`` judges each
accepted transaction against its partition's state (event-time skew, repeated ids) and computes
its stateful features. What is refused keeps its reason (``Entry.rejected``) for the dead-letter
topic; nothing polled is dropped without either a decision, a dead letter or a count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from core import contract as c
from streaming import messages as m
from streaming.consumer_config import ConsumerConfig, ConsumerSummary
from streaming.metrics import StreamMetrics
from streaming.state import CONFLICT, REPEAT, LabelRouter, PartitionState, transaction_digest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """One transactions-topic message of the batch being processed."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    row: dict[str, Any] | None = None
    epoch: int = 0
    rejected: m.Rejected | None = None


class Intake:
    """Parses polled records into ``Entry`` objects and advances the partitions' feature state.

    Keeps only how many refused labels it has reported; the per-partition state lives in
    ``router`` (restored by streaming.partitions.OwnedPartitions). Guarantees: entries come
    out in per-partition offset order; every message not re-read for state only is either to
    score, a dead letter, or a counted repeat; messages re-read for state obey the same rules,
    so a restart rebuilds the same state.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        router: LabelRouter,
        metrics: StreamMetrics,
        summary: ConsumerSummary,
    ) -> None:
        self.config = config
        self.router = router
        self.metrics = metrics
        self.summary = summary
        self._labels_dropped_seen = 0
        self._last_dropped_log = float("-inf")

    def parse(self, records: dict[Any, list[Any]]) -> list[Entry]:
        """Entries in per-partition offset order, each with a row or a rejection."""
        entries: list[Entry] = []
        max_bytes = self.config.max_message_bytes
        for tp, msgs in records.items():
            state = self.router.partitions.get(tp.partition)
            if state is None:
                continue  # revoked while these were in flight: the new owner reads them
            for msg in msgs:
                if state.next_offset is not None and msg.offset < state.next_offset:
                    continue  # already applied to the state (a re-fetch after a seek)
                entry = Entry(tp.partition, msg.offset, msg.timestamp, msg.key, msg.value)
                parsed = m.oversized(msg.key, msg.value, max_bytes) or m.parse_transaction(
                    msg.value
                )
                if isinstance(parsed, m.Rejected):
                    entry.rejected = parsed
                else:
                    entry.row = parsed
                entries.append(entry)
        candidates = [e for e in entries if e.row is not None]
        if candidates:
            # Repeated ids are judged in ``featurise``, in offset order, within and across
            # batches alike (RecentIds).
            valid, rejected = m.validate_batch(
                [e.row for e in candidates],  # type: ignore[misc]
                dedupe=False,
            )
            for entry, tx in zip(candidates, valid, strict=True):
                if tx is None:
                    entry.row = None
                else:
                    entry.row, entry.epoch = tx.row, tx.epoch
            for i, why in rejected.items():
                candidates[i].rejected = why
        return entries

    def featurise(
        self, entries: list[Entry]
    ) -> tuple[list[Entry], list[dict[str, float]], list[Entry]]:
        """Advance each partition's state; returns (to score, their features, to dead-letter).

        The skew rule: a transaction more than ``max_event_time_skew_s`` plus the log clock's
        advance (``_too_far_ahead``) beyond its partition's event time is dead-lettered and
        moves nothing. Messages re-read for state only obey it too, so a restart rebuilds the
        same state."""
        to_score: list[Entry] = []
        features: list[dict[str, float]] = []
        dead: list[Entry] = []
        replayed = repeats = 0
        skew = self.config.max_event_time_skew_s
        # Record timestamps later than this count only up to it: a forged one opens nothing.
        wall_ms = int(time.time() * 1000)
        for e in entries:
            state = self.router.partitions[e.partition]
            silent = e.offset < state.silent_until
            state.next_offset = e.offset + 1
            replayed += silent
            last = state.last_ts
            if e.row is not None and last is not None and e.epoch - last > skew:
                e.rejected = self._too_far_ahead(state, e, min(e.timestamp_ms, wall_ms))
                if e.rejected is not None:
                    e.row = None
            if e.row is not None:
                digest = transaction_digest(e.row)
                seen = state.recent_ids.check(e.row[c.TRANSACTION_ID], digest)
                if seen == REPEAT:
                    # Decided already (a producer's retry, a re-sent file): skipped, counted.
                    repeats += not silent
                    continue
                if seen == CONFLICT:
                    e.rejected = m.Rejected(
                        m.DUPLICATE_TRANSACTION_ID,
                        f"{c.TRANSACTION_ID}: {e.row[c.TRANSACTION_ID]!r} was decided before "
                        "with other content",
                    )
                    e.row = None
            if e.row is None:
                if not silent:
                    dead.append(e)
                continue
            row = e.row
            if last is None or e.epoch > last or state.last_log_ms is None:
                # The log time at which the partition's event time reached its newest value.
                state.last_log_ms = min(e.timestamp_ms, wall_ms)
            state.advance_to(e.epoch)
            feats = state.engine.update(
                row[c.CUSTOMER_ID], row[c.TERMINAL_ID], e.epoch, row[c.AMOUNT]
            )
            state.recent_ids.add(row[c.TRANSACTION_ID], digest)
            if not silent:
                to_score.append(e)
                features.append(feats)
        # Counted once per batch: a counter increment per message is measurable at this rate.
        self.summary.replayed_for_state += replayed
        self.summary.consumed += len(entries) - replayed
        if replayed:
            self.metrics.replayed_for_state.inc(replayed)
        if len(entries) > replayed:
            self.metrics.consumed.inc(len(entries) - replayed)
        if repeats:
            self.summary.repeats_skipped += repeats
            self.metrics.repeats_skipped.inc(repeats)
        self._report_dropped_labels()
        return to_score, features, dead

    def _report_dropped_labels(self) -> None:
        """Export labels refused by full pending heaps (PartitionState.max_pending_labels)."""
        dropped = sum(s.labels_dropped for s in self.router.partitions.values())
        new = dropped - self._labels_dropped_seen
        self._labels_dropped_seen = dropped
        if new <= 0:
            return  # (a revoked partition takes its count along)
        self.metrics.labels_dropped.inc(new)
        now = time.monotonic()
        if now - self._last_dropped_log >= 10:
            self._last_dropped_log = now
            log.error(
                "%d label(s) refused: a partition holds its maximum of labels not yet "
                "available; their terminals' features will miss them",
                new,
            )

    def _too_far_ahead(self, state: PartitionState, e: Entry, log_ms: int) -> m.Rejected | None:
        """Why ``e`` may not move ``state``'s event time (``last_ts``) forward by as much as it
        does, or None. The allowance is the skew plus how far the log clock moved from the
        newest accepted transaction (``last_log_ms``) to ``e``'s ``log_ms``, so a producer
        outage longer than the skew cannot dead-letter everything after it. A restored state
        without a log time starts the log clock at ``e``."""
        assert state.last_ts is not None and e.row is not None
        if state.last_log_ms is None:
            state.last_log_ms = log_ms
        skew = self.config.max_event_time_skew_s
        log_advance_s = max(0, log_ms - state.last_log_ms) / 1000
        ahead = e.epoch - state.last_ts
        if ahead <= skew + log_advance_s:
            return None
        return m.Rejected(
            m.TIMESTAMP_OUT_OF_RANGE,
            f"{c.TIMESTAMP}: {e.row[c.TIMESTAMP]} is {ahead:,} s ahead of the partition's event "
            f"time {m.iso_from_epoch(state.last_ts)}, beyond the limit of {skew:,.0f} s "
            f"(--max-event-time-skew) plus {log_advance_s:,.3f} s the log clock moved since",
        )
