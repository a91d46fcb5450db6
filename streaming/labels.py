"""The labels reader: every scoring consumer reads the whole labels topic, outside the group.

A transaction's terminal features need every label available by its time. Whoever publishes
labels appends them before the transactions that need them (the replay does, with one request
in flight), so before a polled batch is featurised the reader reads the labels topic up to its
end *as of after that poll*: the labels barrier (``LabelFeed.drain``), paid once per batch.

The barrier uses public kafka-python APIs only:

1. ``end_offsets()`` of every labels partition, asked once the transactions poll has returned:
   the broker answers that ListOffsets after it read the batch's transactions, so each end
   offset is past every label appended before them. It is asked on a client of its own, which
   never fetches: a broker answers a connection's requests in order, and the reader nearly
   always has a fetch in flight, which the broker holds up to its fetch wait when there is
   nothing new;
2. ``poll()`` of the reader (a ``KafkaConsumer`` without a group, ``assign()``ed every labels
   partition) until its ``position()`` reaches those offsets, each label handed to the
   router as it comes.

``highwater()`` cannot serve as the barrier: it is the watermark of the last fetch response the
reader parsed, and kafka-python sends the next fetch as soon as a poll hands out records, so
that fetch may have been read by the broker before the transactions were: labels appended in
between would be missed.

Tansu answers a ListOffsets for the end with the start of the partition's last record batch
plus one, not its end. The barrier still holds there: reaching that offset means the reader
took the first record of that batch, and a fetch returns whole batches, so the rest of it is
buffered and handed over by the same poll, or by the next ones while polls come back full.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streaming import messages as m

log = logging.getLogger(__name__)


def partitions_of(client: Any, topic: str, timeout_s: float) -> list[int]:
    """The partition ids of ``topic`` as ``client`` (a ``KafkaConsumer``) sees them, waiting up to
    ``timeout_s`` for a topic that is being created."""
    deadline = time.monotonic() + timeout_s
    ids = client.partitions_for_topic(topic)
    while not ids:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"topic {topic!r} has no partitions (does it exist? run `fraud topics create`)"
            )
        time.sleep(0.2)
        ids = client.partitions_for_topic(topic)
    return sorted(ids)


class LabelFeed:
    """Reads the whole labels topic and hands each label to the router; ``drain()`` is the
    barrier before each batch (see the module docstring).

    ``client_config`` holds the kafka-python keyword arguments of both clients it opens in
    ``start()`` (bootstrap servers, security); ``close()`` closes them. ``fetch_max_wait_ms`` is
    how long the broker may hold the reader's fetch when no label is there."""

    # Labels handed over per poll: a poll returns at most this many from what is buffered.
    MAX_POLL_RECORDS = 20_000

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        router: Any,
        metrics: Any,
        dataset: Any | None,
        fetch_max_wait_ms: int = 10,
    ) -> None:
        self.client_config = client_config
        self.topic = topic
        self.router = router
        self.metrics = metrics
        self.dataset = dataset
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.partitions: list[int] = []
        self._tps: list[Any] = []
        self._reader: Any = None
        self._offsets: Any = None
        # Labels-topic offsets handed to the router so far in this pass over the topic, as of the
        # last drain (kept here: snapshots read them from the rebalance callback, which must not
        # wait on a client).
        self._positions: dict[int, int] = {}
        self._rewind = True
        self._last_bad_log = 0.0
        self._last_retry_log = float("-inf")
        self.catch_up_timeout_s = 30.0
        self.retry_pause_s = 0.05
        # Each poll waits for the fetch in flight: a bound just above the broker's hold limits
        # what a completion the client notices late costs.
        self.poll_timeout_ms = fetch_max_wait_ms + 10
        # Called with each drained batch of valid labels (the drift monitor's live precision).
        self.on_labels: Any | None = None
        # What the last drain did, for the slow-batch log.
        self.last_drain: dict[str, int] = {}

    def start(self, timeout_s: float = 30.0) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._offsets = KafkaConsumer(**self.client_config, group_id=None, metrics_enabled=False)
        self.partitions = partitions_of(self._offsets, self.topic, timeout_s)
        self._tps = [TopicPartition(self.topic, p) for p in self.partitions]
        self._reader = KafkaConsumer(
            **self.client_config,
            group_id=None,
            enable_auto_commit=False,
            # Positions are always set here (from the beginning, or kept): an offset out of range
            # means retention deleted labels, which ``_skip_deleted`` says before going on.
            auto_offset_reset="none",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            max_poll_records=self.MAX_POLL_RECORDS,
            metrics_enabled=False,
        )
        self._reader.assign(self._tps)

    def close(self) -> None:
        """Close both clients (the first failure is raised once both were tried)."""
        errors = []
        for client in (self._reader, self._offsets):
            if client is None:
                continue
            try:
                client.close(autocommit=False)
            except Exception as err:  # noqa: BLE001 - raised below, after the other client
                errors.append(err)
        self._reader = self._offsets = None
        if errors:
            raise RuntimeError(f"closing the labels clients failed: {errors[0]}") from errors[0]

    def rewind(self) -> None:
        """Re-read from the beginning at the next drain (new partition states need every label)."""
        self._rewind = True

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def drain(self) -> int:
        """Hand the router every label appended before this call; returns how many were read.

        Gives up with a warning after ``catch_up_timeout_s`` (the broker gone, or far behind):
        what is missing is read at the next drain and applied as late labels."""
        started = time.monotonic()
        deadline = started + self.catch_up_timeout_s
        stats = self.last_drain = {"polls": 0, "empty": 0, "retries": 0, "handle_ms": 0}
        if self._rewind:
            self._reader.seek_to_beginning(*self._tps)
            self._positions = {}
            self._rewind = False
        read = 0
        ends = self._end_offsets(deadline, stats)
        stats["end_offsets_ms"] = round((time.monotonic() - started) * 1000)
        full = False
        while ends is not None:
            behind = self._behind(ends, deadline)
            if not behind and not full:
                break
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                ends = None
                break
            # Behind: wait for the fetch in flight. Caught up but the last poll came back full:
            # take the rest of what is buffered without waiting.
            got = self._poll(min(left_ms, self.poll_timeout_ms) if behind else 0, stats)
            read += got
            full = got >= self.MAX_POLL_RECORDS
        if ends is None:
            # Never stall scoring on the labels topic.
            log.warning(
                "labels topic %s not caught up after %.0f s (positions %s)",
                self.topic,
                self.catch_up_timeout_s,
                self._positions,
            )
        stats["ms"] = round((time.monotonic() - started) * 1000)
        return read

    def _end_offsets(self, deadline: float, stats: dict[str, int]) -> dict[Any, int] | None:
        """The end offset of every labels partition, asked again until ``deadline`` while the
        broker cannot answer; None when it never did."""
        from kafka.errors import KafkaError

        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return None
            try:
                return self._offsets.end_offsets(self._tps, timeout_ms=left_ms)
            except KafkaError as err:  # broker gone, leadership moving: asked again
                stats["retries"] += 1
                if time.monotonic() - self._last_retry_log >= 10:
                    # Asked again every few tens of ms: one line per 10 s says it all.
                    self._last_retry_log = time.monotonic()
                    log.warning("labels end offsets of %s: %s; asking again", self.topic, err)
                time.sleep(self.retry_pause_s)

    def _behind(self, ends: dict[Any, int], deadline: float) -> bool:
        """Record the reader's positions; whether any partition is short of ``ends``."""
        behind = False
        for tp in self._tps:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            # Waits only after a rewind, for the earliest offsets (a ListOffsets).
            position = self._reader.position(tp, timeout_ms=left_ms)
            if position is None:
                behind = True
                continue
            self._positions[tp.partition] = position
            behind = behind or position < ends[tp]
        return behind

    def _poll(self, timeout_ms: int, stats: dict[str, int]) -> int:
        """One poll of the reader, handled; returns how many labels it brought.

        The records live in this frame only: a poll that times out with a fetch in flight can
        leave a reference cycle in kafka-python that keeps the frames above it alive, so the
        drain's own frame must not hold a batch of labels until the next full collection."""
        from kafka.errors import OffsetOutOfRangeError

        try:
            records = self._reader.poll(timeout_ms=timeout_ms, max_records=self.MAX_POLL_RECORDS)
        except OffsetOutOfRangeError:
            self._skip_deleted()
            return 0
        stats["polls"] += 1
        handled = time.monotonic()
        got = 0
        for tp, msgs in records.items():
            got += self._handle(tp.partition, msgs)
        del records
        stats["empty"] += not got
        stats["handle_ms"] += round((time.monotonic() - handled) * 1000)
        return got

    def _skip_deleted(self) -> None:
        """A fetch position below the partition's earliest offset: retention deleted labels this
        reader never saw, and their terminals' risk is computed without them. Say so, and go on
        from what is left."""
        earliest = self._offsets.beginning_offsets(self._tps)
        moved = False
        for tp in self._tps:
            position = self._reader.position(tp)
            if position is not None and position < earliest[tp]:
                log.error(
                    "labels topic %s[%d]: offset %d is out of range; labels below offset %d "
                    "were deleted unread, going on from there",
                    tp.topic,
                    tp.partition,
                    position,
                    earliest[tp],
                )
                self._reader.seek(tp, earliest[tp])
                moved = True
        if not moved:
            starts = {tp.partition: offset for tp, offset in earliest.items()}
            raise RuntimeError(
                f"labels topic {self.topic}: a fetch position is out of range but none is below "
                f"its partition's earliest offset (positions {self._positions}, earliest "
                f"{starts}): was the topic recreated? Restart the consumer to read it again"
            )

    def _handle(self, partition: int, records: list[Any]) -> int:
        to_store: list[tuple[int, int, m.Label]] = []
        valid: list[m.Label] = []
        for record in records:
            offset = record.offset
            label = m.parse_label(record.value)
            if isinstance(label, m.Rejected):
                self.metrics.labels_rejected.inc()
                now = time.monotonic()
                if now - self._last_bad_log > 10:
                    self._last_bad_log = now
                    log.warning(
                        "skipping unreadable label %s[%d]@%d: %s",
                        self.topic,
                        partition,
                        offset,
                        label.reason,
                    )
                continue
            self.router.deliver(partition, offset, label)
            valid.append(label)
            if self.dataset is not None and self.dataset.wants_label(partition, offset):
                to_store.append((partition, offset, label))
        self.metrics.labels_consumed.inc(len(records))
        if to_store and self.dataset is not None:
            self.dataset.append_labels(to_store)
        if valid and self.on_labels is not None:
            self.on_labels(valid)
        return len(records)
