"""The labels reader: every scoring consumer reads the whole labels topic, outside the group.

A transaction's terminal features need every label available by its time. Whoever publishes
labels appends them before the transactions that need them (the replay does, with one request
in flight), so before a polled batch is featurised the reader reads the labels topic up to its
end *as of after that poll*: the labels barrier, paid once per batch, on every transaction.

The barrier is a Fetch request sent after the poll returned. The broker answers it with the
records past the reader's positions *and* each partition's high watermark as of that read, so
once the positions reach the watermarks of a response, every label appended before the batch's
transactions is in: one round trip. The reader this replaces (a kafka-python consumer behind a
ListOffsets) took two or three: ListOffsets, then the fetch that kafka-python had left in flight
at the end of the previous drain (read by the broker before the poll, so useless for the
barrier), then a fresh one; 4-10 ms per batch at 500 tx/s on the embedded broker, against
2-3 ms for one fetch.

Since the sixth session of 2026-12-02 the scoring consumer reads the labels in the same request
as its transactions, listed after them (``BarrierFetcher.fetch_topics``; ``LabelFeed.absorb``
takes the labels' part): the broker reads a request's topics in order, so the labels come back
as of after the batch was read, with no round trip of their own. ``drain`` then only reads the
partitions such a fetch left behind their watermark.

The wait the broker may hold the fetch starts at 1 ms: a fetch that finds records is answered at
once and one at the end after that 1 ms, with the watermark either way. Tansu's in-memory store
answers *empty*, watermark included, when finding the fetch offset takes longer than the wait
(a partition of ~8,000 one-record batches takes ~10 ms), so a partition that comes back behind
its watermark with nothing doubles the wait, up to ``max_wait_ms``. A drain whose records came
back in under a quarter of the wait halves it; so does a run of 50 drains without a stall (a
drain that finds nothing new is held the whole wait, which is what a raised wait costs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from serving.stream import messages as m

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Message:
    """A fetched record with what the scoring consumer reads of it (``ConsumerRecord``'s names)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass
class FetchedPartition:
    """What one Fetch response held for one partition."""

    high_watermark: int
    # At or past the fetch offset, in offset order: (offset, value) pairs, or ``Message``s for
    # the topic a request asked full messages of.
    records: list[Any] = field(default_factory=list)
    # The position after this response: past the last complete batch returned (control batches
    # and compacted gaps included), or the fetch offset when nothing came back.
    next_offset: int = 0


class OffsetOutOfRange(Exception):
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        super().__init__(f"{topic}[{partition}]: offset {offset} is out of range")
        self.topic = topic
        self.partition = partition
        self.offset = offset


class LabelsOutOfRange(OffsetOutOfRange):
    pass


class BarrierFetcher:
    """Fetch requests outside any consumer group, for the partitions of one or more topics.

    Uses the connection manager and metadata of ``client``, a kafka-python ``KafkaConsumer``
    that is never assigned anything (so it never fetches on its own); requests go to each
    partition's leader, one request per leader, all in flight together. ``topic`` is the one
    ``fetch`` reads (the labels); ``fetch_topics`` reads several in one request.
    """

    def __init__(
        self,
        client: Any,
        topic: str,
        partition_max_bytes: int = 4 * 1024 * 1024,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.topic = topic
        self.partition_max_bytes = partition_max_bytes
        self.max_bytes = max_bytes
        self._last_failure_log = float("-inf")

    def partitions(self, timeout_s: float, topic: str | None = None) -> list[int]:
        topic = topic or self.topic
        # Tracked, so that metadata refreshes keep its leaders (a client that subscribes to
        # nothing would otherwise refresh the metadata of no topic at all).
        self.client._manager.cluster.add_topic(topic)
        deadline = time.monotonic() + timeout_s
        ids = self.client.partitions_for_topic(topic)
        while not ids:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"topic {topic!r} has no partitions (does it exist? run `fraud topics create`)"
                )
            time.sleep(0.2)
            ids = self.client.partitions_for_topic(topic)
        return sorted(ids)

    def earliest(self, partitions: list[int], topic: str | None = None) -> dict[int, int]:
        from kafka import TopicPartition

        tps = [TopicPartition(topic or self.topic, p) for p in partitions]
        return {tp.partition: off for tp, off in self.client.beginning_offsets(tps).items()}

    def fetch(self, positions: dict[int, int], max_wait_ms: int) -> dict[int, FetchedPartition]:
        """One Fetch per leader for ``positions`` (partition -> offset) of ``topic``, sent now;
        see ``fetch_topics``."""
        return self.fetch_topics({self.topic: positions}, max_wait_ms).get(self.topic, {})

    def fetch_topics(
        self,
        positions: dict[str, dict[int, int]],
        max_wait_ms: int,
        messages_of: str | None = None,
    ) -> dict[str, dict[int, FetchedPartition]]:
        """One Fetch per leader for ``positions`` (topic -> partition -> offset), sent now;
        returns the partitions answered without error, by topic. The request names the topics
        in the order of ``positions``, and a broker reads them in that order (Tansu and Kafka
        both go through a request's partitions one after the other): a topic listed later is
        read after the ones before it. Records of ``messages_of`` come back as ``Message``s,
        the others as (offset, value). Partitions left out (leader unknown, leadership
        moving, connection lost) are to be fetched again after a pause; an offset out of range
        raises ``OffsetOutOfRange`` (``LabelsOutOfRange`` for ``topic``); errors that retrying
        cannot fix are raised."""
        from kafka import TopicPartition
        from kafka.protocol.consumer import FetchRequest

        manager = self.client._manager  # kafka-python 3's connection manager (pinned in the lock)
        cluster = manager.cluster
        by_leader: dict[int, dict[str, list[int]]] = {}
        for topic, offsets in positions.items():
            for p in offsets:
                leader = cluster.leader_for_partition(TopicPartition(topic, p))
                if leader is None or leader == -1:
                    cluster.request_update()
                    continue
                by_leader.setdefault(leader, {}).setdefault(topic, []).append(p)
        topic_cls = FetchRequest.FetchTopic
        part_cls = topic_cls.FetchPartition
        requests = {
            leader: FetchRequest(
                replica_id=-1,
                max_wait_ms=max_wait_ms,
                min_bytes=1,
                max_bytes=self.max_bytes,
                isolation_level=0,
                session_id=0,
                session_epoch=-1,  # no fetch session: every request names its partitions
                topics=[
                    topic_cls(
                        topic=topic,
                        partitions=[
                            part_cls(
                                partition=p,
                                current_leader_epoch=-1,
                                fetch_offset=positions[topic][p],
                                last_fetched_epoch=-1,
                                log_start_offset=-1,
                                partition_max_bytes=self.partition_max_bytes,
                            )
                            for p in parts
                        ],
                    )
                    for topic, parts in topics.items()
                ],
                forgotten_topics_data=[],
                rack_id="",
                max_version=12,  # what kafka-python's own fetcher speaks
            )
            for leader, topics in by_leader.items()
        }

        failures: list[str] = []

        async def send_all() -> list[Any]:
            futures = [
                (leader, manager.send(req, node_id=leader)) for leader, req in requests.items()
            ]
            answers = []
            for leader, future in futures:
                try:
                    answers.append(await future)
                except Exception as err:  # noqa: BLE001 - connection trouble: fetched again
                    failures.append(f"broker {leader}: {type(err).__name__}: {err}")
            return answers

        answers = manager.run(send_all) if requests else []
        out: dict[str, dict[int, FetchedPartition]] = {}
        if failures and time.monotonic() - self._last_failure_log >= 10:
            # Callers retry every few tens of ms: one line per 10 s says it all.
            self._last_failure_log = time.monotonic()
            log.warning(
                "fetch from %s failed (%s); fetching again", ", ".join(positions), failures[0]
            )
        for response in answers:
            for topic_data in response.responses:
                topic = topic_data.topic
                for data in topic_data.partitions:
                    got = self._partition(
                        topic, data, positions[topic][data.partition_index], topic == messages_of
                    )
                    if got is not None:
                        out.setdefault(topic, {})[data.partition_index] = got
        return out

    def _partition(
        self, topic: str, data: Any, position: int, messages: bool
    ) -> FetchedPartition | None:
        from kafka import errors
        from kafka.record import MemoryRecords

        p = data.partition_index
        where = f"{topic}[{p}]@{position}"
        if data.error_code:
            error = errors.for_code(data.error_code)
            if error is errors.OffsetOutOfRangeError:
                if topic == self.topic:
                    raise LabelsOutOfRange(topic, p, position)
                raise OffsetOutOfRange(topic, p, position)
            if getattr(error, "retriable", False) or getattr(error, "invalid_metadata", False):
                self.client._manager.cluster.request_update()
                log.debug("fetch %s: %s; fetching again", where, error.__name__)
                return None
            raise RuntimeError(f"fetch {where} failed: {error.__name__}")
        out = FetchedPartition(data.high_watermark, next_offset=position)
        if not data.records:
            return out
        records = MemoryRecords(data.records)
        batch = records.next_batch()
        append = out.records.append
        while batch is not None:  # only complete batches; a truncated last one comes next time
            if not batch.validate_crc():
                raise RuntimeError(f"fetch {where}: record batch failed its CRC check")
            last = None
            if not getattr(batch, "is_control_batch", False):
                for record in batch:
                    last = record.offset
                    # A batch starts where it was written: skip what was read before.
                    if record.offset >= position:
                        if messages:
                            append(
                                Message(
                                    topic,
                                    p,
                                    record.offset,
                                    record.timestamp,
                                    record.key,
                                    record.value,
                                )
                            )
                        else:
                            append((record.offset, record.value))
            # Magic 2 batches know their end even when compaction emptied their tail.
            end = getattr(batch, "next_offset", None)
            if end is None and last is not None:
                end = last + 1
            if end is not None and end > out.next_offset:
                out.next_offset = end
            batch = records.next_batch()
        return out


class FetchWait:
    """How long to let the broker hold a fetch, for Tansu's empty answers (module docstring).

    Starts at ``floor_ms``; ``stalled()`` (a partition came back behind its watermark with
    nothing) doubles it up to ``max_ms``. ``settle()`` ends a round of fetches: with no stall in
    it, the wait is halved when records came back in under a quarter of it (a doubling lands
    within twice the scan time, so this cannot oscillate), or else after ``DECAY_AFTER`` rounds
    in a row (a round that found nothing new is held the whole wait and says nothing of the
    scan)."""

    DECAY_AFTER = 50

    def __init__(self, floor_ms: int, max_ms: int) -> None:
        self.floor_ms = floor_ms
        self.max_ms = max(max_ms, floor_ms)
        self.ms = floor_ms
        self._clean = 0
        self._stalled = False

    def stalled(self) -> None:
        self._stalled = True
        self.ms = min(self.ms * 2, self.max_ms)

    def settle(self, slowest_with_records_s: float | None) -> None:
        if self._stalled:
            self._clean = 0
        elif (
            self.ms > self.floor_ms
            and slowest_with_records_s is not None
            and slowest_with_records_s * 1000 * 4 < self.ms
        ):
            # The broker's scan is that fast again (the demo's retrain had raised the labels
            # wait to 128 ms while answers took ~20 ms).
            self.ms = max(self.floor_ms, self.ms // 2)
            self._clean = 0
        else:
            self._clean += 1
            if self._clean >= self.DECAY_AFTER and self.ms > self.floor_ms:
                self.ms = max(self.floor_ms, self.ms // 2)
                self._clean = 0
        self._stalled = False


class LabelFeed:
    """Reads the whole labels topic and hands each label to the router; ``drain()`` is the
    barrier before each batch (see the module docstring)."""

    # Clean drains in a row after which a raised fetch wait is halved.
    WAIT_DECAY_DRAINS = FetchWait.DECAY_AFTER

    def __init__(
        self,
        fetcher: BarrierFetcher,
        router: Any,
        metrics: Any,
        dataset: Any | None,
        max_wait_ms: int = 500,
    ) -> None:
        self.fetcher = fetcher
        self.topic = fetcher.topic
        self.router = router
        self.metrics = metrics
        self.dataset = dataset
        self._wait = FetchWait(1, max_wait_ms)
        self.partitions: list[int] = []
        # Labels-topic offsets handed to the router so far in this pass over the topic.
        self._positions: dict[int, int] = {}
        self._rewind = True
        self._last_bad_log = 0.0
        self.catch_up_timeout_s = 30.0
        self.retry_pause_s = 0.05
        # Called with each drained batch of valid labels (the drift monitor's live precision).
        self.on_labels: Any | None = None
        # What the last drain did, for the slow-batch log.
        self.last_drain: dict[str, int] = {}

    @property
    def wait_ms(self) -> int:
        return self._wait.ms

    @wait_ms.setter
    def wait_ms(self, ms: int) -> None:
        self._wait.ms = ms

    def start(self, timeout_s: float = 30.0) -> None:
        self.partitions = self.fetcher.partitions(timeout_s)

    def rewind(self) -> None:
        """Re-read from the beginning at the next drain (new partition states need every label)."""
        self._rewind = True

    def positions(self) -> dict[int, int]:
        return dict(self._positions)

    def fetch_positions(self) -> dict[int, int]:
        """Where to fetch each partition from, for a fetch that reads the labels along with
        other topics (``absorb`` takes its answer)."""
        self._maybe_rewind()
        return dict(self._positions)

    def absorb(self, fetched: dict[int, FetchedPartition], asked: dict[int, int]) -> set[int]:
        """Hand over the labels of a fetch sent with ``fetch_positions``; returns the partitions
        still behind their watermark (a ``drain`` of them completes the barrier). Partitions
        the fetch left out (leader unknown, connection lost) count as behind."""
        stats = self.last_drain = {"fetches": 0, "empty": 0, "retries": 0, "handle_ms": 0}
        handled = time.monotonic()
        behind = set(asked)
        read = 0
        for p, part in fetched.items():
            if part.records:
                read += self._handle(p, part.records)
            self._positions[p] = part.next_offset
            if part.next_offset >= part.high_watermark:
                behind.discard(p)
        stats["absorbed"] = read
        stats["handle_ms"] = round((time.monotonic() - handled) * 1000)
        return behind

    def _maybe_rewind(self) -> None:
        if self._rewind:
            self._positions = self.fetcher.earliest(self.partitions)
            self._rewind = False

    def drain(self, partitions: set[int] | None = None) -> int:
        """Read every label appended before this call (of ``partitions``, default all);
        returns how many were read."""
        self._maybe_rewind()
        started = time.monotonic()
        stats = self.last_drain
        if partitions is None or "absorbed" not in stats:
            stats = self.last_drain = {"fetches": 0, "empty": 0, "retries": 0, "handle_ms": 0}
        pending = set(self.partitions if partitions is None else partitions)
        read = 0
        # The slowest fetch that brought records: about how long the broker's scan takes now.
        slowest_with_records: float | None = None
        deadline = started + self.catch_up_timeout_s
        while pending:
            if time.monotonic() > deadline:
                # Never stall scoring on the labels topic: what is missing now is read (and
                # applied as late labels) at the next drain.
                log.warning(
                    "labels topic %s not caught up after %.0f s (positions %s)",
                    self.topic,
                    self.catch_up_timeout_s,
                    self._positions,
                )
                break
            asked = {p: self._positions[p] for p in pending}
            sent = time.monotonic()
            try:
                fetched = self.fetcher.fetch(asked, self.wait_ms)
            except LabelsOutOfRange as err:
                # Retention deleted labels this reader never saw: their terminals' risk is
                # computed without them. Say so, and go on from what is left.
                start = self.fetcher.earliest([err.partition])[err.partition]
                log.error(
                    "%s; labels below offset %d were deleted unread, going on from there",
                    err,
                    start,
                )
                self._positions[err.partition] = start
                continue
            stats["fetches"] += 1
            handled = time.monotonic()
            stalled = False
            if any(part.records for part in fetched.values()):
                slowest_with_records = max(slowest_with_records or 0.0, handled - sent)
            for p, part in fetched.items():
                if part.records:
                    read += self._handle(p, part.records)
                if part.next_offset >= part.high_watermark:
                    pending.discard(p)
                elif part.next_offset == self._positions[p]:
                    stalled = True  # behind, yet nothing came back: the broker ran out of time
                self._positions[p] = part.next_offset
            stats["handle_ms"] += round((time.monotonic() - handled) * 1000)
            if stalled:
                stats["empty"] += 1
                self._wait.stalled()
            if len(fetched) < len(asked):  # leader unknown or moving, connection lost
                stats["retries"] += 1
                time.sleep(self.retry_pause_s)
        self._wait.settle(slowest_with_records)
        stats["ms"] = round((time.monotonic() - started) * 1000)
        stats["wait_ms"] = self.wait_ms
        return read

    def _handle(self, partition: int, records: list[tuple[int, bytes | None]]) -> int:
        to_store: list[tuple[int, int, m.Label]] = []
        valid: list[m.Label] = []
        for offset, value in records:
            label = m.parse_label(value)
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
