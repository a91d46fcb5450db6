"""The transactions partitions this consumer owns in its group, and where it reads each one.

``OwnedPartitions`` wraps the group consumer for the loop: the poll with its offset tracking,
the rebalance bookkeeping (kafka-python's callbacks run on its IO thread, so an assignment is
only recorded there and applied by the loop), restoring a newly assigned partition's feature
state from its snapshot, the hold that keeps the group membership while the model server is
down, and the lag metric.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from streaming.consumer_config import ConsumerConfig
from streaming.health import ConsumerHealth
from streaming.metrics import StreamMetrics
from streaming.state import LabelRouter, PartitionState, SnapshotStore

log = logging.getLogger(__name__)


class OwnedPartitions:
    """Positions and assignment of the group consumer's transactions partitions.

    Keeps, per owned partition, the next offset to read (``positions``): where it was restored
    to, then past the last record polled (sought again at each assignment; the lag's position).
    Keeps the assignment the rebalance callback recorded until the loop applies it, and whether
    a batch is in flight (``in_batch``) and must be given up (``aborted``) because the
    partitions moved. Guarantees: every assigned partition is paused until it is sought to its
    restored position, and a poll whose result predates such seeks is not handed out.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        consumer: Any,
        router: LabelRouter,
        store: SnapshotStore,
        metrics: StreamMetrics,
        health: ConsumerHealth,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.router = router
        self.store = store
        self.metrics = metrics
        self.health = health
        self._consumer = consumer
        self._stop = stop
        self.positions: dict[Any, int] = {}
        self.in_batch = False
        self.aborted = False
        # Set by the rebalance callback, applied by the loop right after poll() returns:
        # kafka-python 3 runs callbacks on its IO thread, where blocking calls are not allowed.
        self._pending: set[Any] | None = None
        # Revoked while the loop held the state (``note_revoked``), let go by the loop.
        self._revoked: set[Any] = set()

    @property
    def pending(self) -> bool:
        """Whether an assignment awaits ``take_pending`` and ``assign``."""
        return self._pending is not None

    def begin_batch(self) -> None:
        self.in_batch = True
        self.aborted = False

    def end_batch(self) -> None:
        self.in_batch = False

    def poll(self, max_records: int) -> dict[Any, list[Any]] | None:
        """Up to ``max_records`` transactions of the owned partitions, in offset order per
        partition; None when the assignment changed meanwhile (the loop applies it, then reads
        again from the positions it sets)."""
        records = self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms, max_records=max_records
        )
        if self._pending is not None:
            return None
        for tp, msgs in records.items():
            expected = self.positions.get(tp)
            if expected is not None and msgs[0].offset != expected:
                self._out_of_range(tp, expected, msgs[0].offset)
            if msgs[-1].offset - msgs[0].offset != len(msgs) - 1:
                self._gaps(tp, msgs)
            self.positions[tp] = msgs[-1].offset + 1
        return records

    def _gaps(self, tp: Any, msgs: list[Any]) -> None:
        """A poll returned ``tp`` with offsets missing in between. Compaction and transaction
        markers leave such gaps; on the transactions topic (neither) it means messages the fetch
        did not hand out: say which."""
        gaps = [
            f"{a.offset + 1}-{b.offset - 1}"
            for a, b in zip(msgs, msgs[1:], strict=False)
            if b.offset != a.offset + 1
        ]
        log.error(
            "%s[%d]: the fetch skipped offsets %s (compacted or transaction markers?)",
            tp.topic,
            tp.partition,
            ", ".join(gaps),
        )

    def _out_of_range(self, tp: Any, expected: int, got: int) -> None:
        """A poll returned ``tp`` from ``got`` instead of ``expected``. Compaction and
        transaction markers skip offsets too; retention deleting transactions never read is
        what makes kafka-python (``auto_offset_reset="earliest"``) move on silently: say so.
        Costs a ListOffsets, only when offsets are skipped."""
        if got < expected:
            log.error(
                "%s[%d]: offsets went back from %d to %d (was the topic recreated?); offsets "
                "below %d are skipped as decided already",
                tp.topic,
                tp.partition,
                expected,
                got,
                expected,
            )
            return
        start = self._earliest(tp)
        if start <= expected:
            log.error(
                "%s[%d]: the fetch went on at offset %d, not %d: offsets %d-%d were skipped "
                "(compacted or transaction markers?)",
                tp.topic,
                tp.partition,
                got,
                expected,
                expected,
                got - 1,
            )
        else:
            log.error(
                "%s[%d]: offset %d is out of range; transactions %d-%d were deleted unread "
                "(retention), going on from %d",
                tp.topic,
                tp.partition,
                expected,
                expected,
                start - 1,
                got,
            )

    def on_assigned(self, assigned: Any) -> None:
        """The rebalance callback's half: runs on kafka-python's IO thread."""
        # Paused until the loop has set their positions (``assign``): kafka-python would
        # otherwise start fetching them from the committed offsets.
        self._consumer.pause(*assigned)
        self.metrics.rebalances.inc()
        if self.in_batch:
            self.aborted = True  # a held batch is re-read from the restored positions
        self._pending = set(assigned)

    def note_revoked(self, revoked: Any) -> None:
        """The revocation callback's half when the loop holds the state: runs on kafka-python's
        IO thread."""
        self._revoked |= set(revoked)

    def take_revoked(self) -> set[Any]:
        """The partitions ``note_revoked`` recorded (empty if none), now no longer recorded."""
        revoked, self._revoked = self._revoked, set()
        return revoked

    def take_pending(self) -> set[Any]:
        """The assignment recorded by ``on_assigned`` (empty if none), now no longer pending."""
        assigned, self._pending = self._pending or set(), None
        return assigned

    def assign(self, assigned: set[Any], label_positions: dict[int, int]) -> list[Any]:
        """Restore state for newly assigned partitions, seek every assigned partition to where
        its state goes on (partitions kept across the rebalance keep theirs) and resume them;
        returns the newly assigned ones. ``label_positions``: the labels reader's, handed to
        the kept partitions' states."""
        for tp in list(self.positions):
            if tp not in assigned or tp.partition not in self.router.partitions:
                del self.positions[tp]
        for partition in [
            p for p in self.router.partitions if p not in {tp.partition for tp in assigned}
        ]:
            del self.router.partitions[partition]
        new = [tp for tp in assigned if tp.partition not in self.router.partitions]
        for state in self.router.partitions.values():
            state.delivered_positions = dict(label_positions)
        for tp in new:
            self.router.partitions[tp.partition] = self._restore(tp)
        for tp in assigned:
            self._consumer.seek(tp, self.positions[tp])
        self._consumer.resume(*assigned)
        return new

    def forget(self, revoked: Any) -> None:
        """Drop the state and the lag metric of revoked partitions."""
        for tp in revoked:
            self.router.partitions.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # no lag was reported for it yet
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def _restore(self, tp: Any) -> PartitionState:
        cfg = self.config
        state, snap = self.store.restore(
            tp.topic,
            tp.partition,
            cfg.label_delay_days,
            max_pending_labels=cfg.max_pending_labels,
            recent_ids_capacity=cfg.recent_ids,
        )
        committed = self._consumer.committed(tp)
        if snap is not None:
            self.positions[tp] = snap.next_offset
            if committed is not None and committed > snap.next_offset:
                state.silent_until = committed
            log.info(
                "%s[%d]: restored snapshot at offset %d (committed %s)",
                tp.topic,
                tp.partition,
                snap.next_offset,
                committed,
            )
        elif committed is not None:
            # Decided before, but the state is gone: rebuild it from the retained history.
            self.positions[tp] = self._earliest(tp)
            state.silent_until = committed
            log.warning(
                "%s[%d]: no snapshot in %s; rebuilding features from the earliest retained "
                "offset up to the committed offset %d",
                tp.topic,
                tp.partition,
                self.store.dir,
                committed,
            )
        else:
            self.positions[tp] = self._earliest(tp)
        return state

    def _earliest(self, tp: Any) -> int:
        return self._consumer.beginning_offsets([tp])[tp]

    def hold(self, seconds: float) -> bool:
        """Sleep while polling the consumer, its partitions paused, so the group keeps us;
        False = give up (stopping, or the partitions moved)."""
        consumer = self._consumer
        consumer.pause(*(consumer.assignment() or ()))
        try:
            deadline = time.monotonic() + seconds
            while True:
                self.health.beat()
                if self._stop.is_set() or self.aborted:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                polled = consumer.poll(timeout_ms=int(min(left, 0.2) * 1000) or 1)
                if self.aborted:
                    return False  # rebalanced: records of new partitions are fetched again
                if polled:  # cannot happen while paused; refuse to lose messages silently
                    raise RuntimeError("paused consumer returned records during a scoring hold")
        finally:
            # What was fetched meanwhile stays buffered and is handed out after the resume. A
            # new assignment is resumed once its positions are set.
            if self._pending is None:
                consumer.resume(*(consumer.assignment() or ()))

    def update_lag(self) -> None:
        """Set the lag metric of every owned partition from its position."""
        assigned = self._consumer.assignment() or set()
        for tp, position in self.positions.items():
            # The high watermark of the last fetch answer: lag, not a barrier (it may predate
            # the poll).
            high = self._consumer.highwater(tp) if tp in assigned else None
            if high is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )
