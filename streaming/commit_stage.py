"""The consumer's commit stage: offsets committed after a batch's outputs are acknowledged, and
the feature snapshots a restart or the partitions' next owner restores.

A partition's committed offset never moves past a fallback decision awaiting its re-score
(streaming.score_stage.FallbackBacklog), and a snapshot is never taken of state whose outputs
are not all acknowledged (``Commits.dirty``): restoring it would skip messages without a
decision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from streaming.consumer_config import ConsumerConfig
from streaming.labels import LabelFeed
from streaming.metrics import StreamMetrics
from streaming.score_stage import FallbackBacklog
from streaming.state import LabelRouter, SnapshotStore, SnapshotWriter

log = logging.getLogger(__name__)


class Commits:
    """Commits the group consumer's offsets and snapshots the partitions' feature state.

    Keeps the commit in flight (at most one: ``await_commit``), when the last snapshot was
    taken, and ``dirty``: True while the engines hold updates whose outputs are not all
    acknowledged yet. Such state must never be snapshotted (a restore seeks to the snapshot's
    offset, so it would skip messages without a decision). Acknowledged is enough, committed or
    not: a snapshot ahead of the committed offset is restored from its own offset. The loop
    sets ``dirty`` before advancing the state and clears it once a batch's commit is sent.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        consumer: Any,
        router: LabelRouter,
        store: SnapshotStore,
        writer: SnapshotWriter,
        labels: LabelFeed,
        backlog: FallbackBacklog,
        metrics: StreamMetrics,
    ) -> None:
        self.config = config
        self.router = router
        self.store = store
        self.backlog = backlog
        self.metrics = metrics
        self._consumer = consumer
        self._writer = writer
        self._labels = labels
        self.dirty = False
        # Set when the last asynchronous offset commit is answered (None: nothing in flight).
        self._commit_done: threading.Event | None = None
        self._last_snapshot = 0.0

    def commit(self, partitions: Iterable[Any]) -> bool:
        """Send the offsets after what was read of ``partitions`` (their outputs are
        acknowledged); False if they could not be sent. Asynchronous: the round trip (~2 ms,
        more under load) overlaps the next poll instead of lengthening every batch;
        ``await_commit`` bounds what is in flight to one batch."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for tp in partitions:
            state = self.router.partitions.get(tp.partition)
            # Never move a committed offset back while re-reading for state.
            if (
                state is not None
                and state.next_offset is not None
                and state.next_offset > state.silent_until
            ):
                offset = state.next_offset
                oldest = self.backlog.oldest_offset(tp.partition)
                if oldest is not None:  # fallback decisions awaiting their re-score are re-read
                    offset = min(offset, oldest)
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return True
        done = threading.Event()
        try:
            future = self._consumer.commit_async(offsets=offsets, callback=self._on_committed)
        except KafkaError as err:
            self.metrics.commit_failures.inc()
            log.warning("commit not sent (%s); the new owner re-reads from the last commit", err)
            return False
        # Set from kafka-python's IO thread. (With the coordinator unknown, kafka-python returns
        # the coordinator lookup's future instead: the wait then covers the lookup only.)
        future.add_both(lambda _: done.set())
        self._commit_done = done
        return True

    def _on_committed(self, offsets: dict[Any, Any], response: Any) -> None:
        """kafka-python calls this from a later poll or commit of this thread."""
        if isinstance(response, BaseException):
            # A rebalance took the partitions: the decisions are out (at least once), and the
            # new owner restores the snapshot taken at the revocation or re-reads from the
            # last commit.
            self.metrics.commit_failures.inc()
            log.warning(
                "commit of %s failed (%s); the new owner re-reads from the last commit",
                {f"{tp.topic}[{tp.partition}]": om.offset for tp, om in offsets.items()},
                response,
            )
            return
        self.metrics.commits.inc()
        self.metrics.last_commit_timestamp.set(time.time())

    def await_commit(self, timeout_s: float = 60.0) -> None:
        """Wait for the last commit sent to be answered (it nearly always already is)."""
        done = self._commit_done
        if done is None:
            return
        if not done.wait(timeout_s):
            # As with unacknowledged outputs: stop rather than let uncommitted work pile up;
            # the restart restores the snapshot and re-decides from the last commit.
            raise RuntimeError(
                f"offset commit not answered by the group coordinator of "
                f"{self.config.bootstrap_servers} within {timeout_s:.0f} s"
            )
        self._commit_done = None

    def snapshot_all(self, force: bool) -> None:
        """Snapshot every partition with new state: queued for the background writer, or, with
        ``force`` (shutdown, revocation), written before returning."""
        now = time.monotonic()
        if not force and now - self._last_snapshot < self.config.snapshot_interval_s:
            return
        positions = self._labels.positions()
        started = time.monotonic()
        total = 0
        topic = self.config.topics.transactions
        if force:
            self._writer.flush()  # older queued files must not overwrite the ones written now
        for state in self.router.partitions.values():
            if state.next_offset is None or state.next_offset <= state.silent_until:
                continue  # nothing new, or still rebuilding: the old snapshot stays valid
            if self.backlog.holds(state.partition):
                continue  # restarts must re-read the fallback decisions (FallbackBacklog)
            blob = self.store.encode(topic, state, positions)
            if force:
                self.store.write(topic, state.partition, blob)
            else:
                self._writer.submit(topic, state.partition, blob)
            total += len(blob)
            self.metrics.snapshots.inc()
        self._last_snapshot = time.monotonic()
        self.metrics.snapshot_duration.observe(self._last_snapshot - started)
        self.metrics.snapshot_bytes.set(total)

    def flush_snapshots(self) -> None:
        """Wait until every queued snapshot is written (before a revoked partition's next owner
        writes its own)."""
        self._writer.flush()

    def hand_over(self) -> None:
        """Leave revoked partitions' state for their next owner (runs on kafka-python's IO
        thread: file IO only, no blocking Kafka calls)."""
        if not self.dirty:
            # The state matches the committed offsets: hand it over exactly.
            self.snapshot_all(force=True)
        else:
            self.flush_snapshots()
