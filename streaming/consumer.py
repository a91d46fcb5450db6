"""The real-time scoring consumer: transactions in, decisions and alerts out, at least once.

One loop iteration handles one batch:

1. poll the group consumer for up to a batch of the owned transactions partitions, then read
   the labels topic up to its end as of after that poll (every instance reads all labels,
   outside the group): the labels barrier, see streaming.labels;
2. parse and validate each transaction; bad ones go to the dead-letter topic with the reason,
   the original bytes and where they came from;
3. per partition, in offset order: apply the labels available by the transaction's time, then
   compute its stateful features with that partition's ``StreamingFeatureEngine``;
4. ONE :predict call for the whole batch; decide with the thresholds of the version that
   answered; when the model server is unavailable the batch is held and retried with backoff
   (partitions paused, group membership kept), never dropped and never committed;
5. produce a decision for every transaction and an alert for review/block, wait for the broker's
   acknowledgements, append the batch to the consumed dataset, and only then commit the offsets;
6. snapshot the feature state (every commit, or every ``snapshot_interval_s``).

A restart restores each partition's snapshot and seeks to its offset; messages between the
snapshot and the committed offset were decided already and are replayed through the feature
engine only, so the features after a restart equal those of an uninterrupted run and at most one
poll batch (the one in flight when the process died) is decided twice.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import contract as c
from core.settings import Topics
from streaming import messages as m
from streaming.dataset import ConsumedDataset
from streaming.gcpolicy import GcPauseLog, GcPolicy
from streaming.health import ConsumerHealth
from streaming.kafka_config import KafkaSecurity, client_config, has_c_crc32c
from streaming.labels import LabelFeed, partitions_of
from streaming.metrics import StreamMetrics
from streaming.scoring import Scored, Scorer, ScoringUnavailable
from streaming.state import (
    CONFLICT,
    DEFAULT_MAX_PENDING_LABELS,
    DEFAULT_RECENT_IDS,
    REPEAT,
    LabelRouter,
    PartitionState,
    SnapshotStore,
    SnapshotWriter,
    transaction_digest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    group_id: str = "fraud-scoring"
    topics: Topics = field(default_factory=Topics)
    state_dir: Path = Path("runs/stream")
    model_name: str = "fraud"
    batch_size: int = 1000
    poll_timeout_ms: int = 200
    max_messages: int | None = None
    exit_when_idle_s: float | None = None
    # Seconds between feature snapshots (0: after every commit). Encoding every partition's
    # state takes tens of ms, which after every batch would cost throughput and add to the
    # latency of the next batch; with an interval, a restart re-reads
    # the messages between the snapshot and the committed offset through the feature engine
    # only (no scoring, no output), so features stay exact and duplicates stay <= one batch.
    snapshot_interval_s: float = 2.0
    include_features: bool = False
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    # How far (seconds) one transaction may move its partition's event time beyond the newest
    # accepted one, plus however far the log clock (Kafka record timestamps) moved since that
    # one: longer than any quiet gap of one partition of a live card stream, shorter than the
    # label delay and the customer windows, so no accepted jump can empty the windows or apply
    # every pending label at once. See ``_features``.
    max_event_time_skew_s: float = float(c.SECONDS_PER_DAY)
    # Messages whose key plus value exceed this are dead-lettered without being decoded.
    max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES
    # Bytes of the original key and of the value a dead letter carries (see messages).
    dead_letter_max_payload_bytes: int = m.DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES
    # How long a batch may wait for the model server before that is an incident (logged as an
    # error and counted); the batch keeps being retried after it, nothing is dropped.
    lag_bound_s: float = 60.0
    # A card authorisation cannot wait for a model server that is down: a transaction held
    # this long gets ``fallback_decision`` (marked as a fallback, counted) and is re-scored
    # once the server answers, the re-score going to the decisions topic as a correction.
    # None: hold without a deadline.
    decision_deadline_s: float | None = 2.0
    fallback_decision: str = c.REVIEW
    # Fallback-decided transactions kept for their re-score (about 1.5 KB each). Beyond it the
    # consumer stops taking new batches and holds, as without a deadline: nothing is dropped.
    max_fallback_backlog: int = 100_000
    # Per partition: labels held until their availability (streaming.state), and the
    # transaction ids remembered to skip identical re-sends and dead-letter conflicting ones.
    max_pending_labels: int = DEFAULT_MAX_PENDING_LABELS
    recent_ids: int = DEFAULT_RECENT_IDS
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    write_dataset: bool = True
    fsync_snapshots: bool = True
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    # How long the broker may hold a transactions fetch. Apache Kafka answers as soon as data
    # is there, but Tansu reads once and, finding nothing, sleeps the whole fetch.max.wait.ms
    # and answers empty: a record arriving meanwhile waits out the hold and the next fetch, so
    # on Tansu this wait is latency (a probe consumer's delivery p99 was 54 ms at 100 ms and
    # 10 ms at 20 ms). A fetch that finds records is answered at once (median 3.8 ms at
    # 500 tx/s). Tansu also answers empty when finding the offset takes longer than the wait
    # (partitions of very many small batches): below ~5 ms it starts doing so. On Apache Kafka,
    # raise it to save idle fetches.
    fetch_max_wait_ms: int = 10
    # The same for the labels reader's fetch (the barrier waits for it when labels arrive).
    labels_fetch_max_wait_ms: int = 10
    # A poll plus batch taking this long is logged with the time of each stage.
    slow_batch_s: float = 1.0
    # Seconds between full garbage collections, see GcPolicy. Each one stops the loop for the
    # time it takes to traverse every object in the process (30-150 ms).
    gc_full_interval_s: float = 300.0
    security: KafkaSecurity | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"consumer: batch size must be >= 1, got {self.batch_size}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ValueError(f"consumer: max messages must be >= 1, got {self.max_messages}")
        if self.decision_deadline_s is not None and self.decision_deadline_s < 0:
            raise ValueError(
                f"consumer: decision deadline must be >= 0 s, got {self.decision_deadline_s}"
            )
        if self.fallback_decision not in c.DECISIONS:
            raise ValueError(
                f"consumer: fallback decision {self.fallback_decision!r} is not one of "
                f"{', '.join(c.DECISIONS)}"
            )
        if self.max_fallback_backlog < 0:
            raise ValueError(
                f"consumer: max fallback backlog must be >= 0, got {self.max_fallback_backlog}"
            )
        if self.snapshot_interval_s < 0:
            raise ValueError("consumer: snapshot interval must be >= 0")
        if self.gc_full_interval_s <= 0:
            raise ValueError(
                f"consumer: gc full interval must be > 0 s, got {self.gc_full_interval_s}"
            )
        for name in ("fetch_max_wait_ms", "labels_fetch_max_wait_ms"):
            # Tansu answers a fetch with a zero wait before reading anything: never any data.
            if getattr(self, name) < 1:
                raise ValueError(f"consumer: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_event_time_skew_s < math.inf:
            raise ValueError(
                f"consumer: max event time skew must be > 0 s, got {self.max_event_time_skew_s}"
            )
        if self.max_message_bytes < 1:
            raise ValueError(
                f"consumer: max message bytes must be >= 1, got {self.max_message_bytes}"
            )
        if self.dead_letter_max_payload_bytes < 0:
            raise ValueError(
                "consumer: dead letter max payload bytes must be >= 0, got "
                f"{self.dead_letter_max_payload_bytes}"
            )


@dataclass
class ConsumerSummary:
    consumed: int = 0
    decided: int = 0
    dead_lettered: int = 0
    replayed_for_state: int = 0
    batches: int = 0
    alerts: int = 0
    seconds: float = 0.0
    aborted_batches: int = 0
    repeats_skipped: int = 0  # identical re-sends of a transaction already decided
    # Monotonic times of the first batch received and the last batch committed: their
    # difference is the busy time, excluding group joins and idle waits (for throughput).
    first_batch_at: float | None = None
    last_commit_at: float | None = None

    @property
    def active_seconds(self) -> float:
        if self.first_batch_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_batch_at

    def describe(self) -> str:
        return (
            f"consumed {self.consumed:,} transactions in {self.batches:,} batches "
            f"({self.decided:,} decided, {self.alerts:,} alerts, {self.dead_lettered:,} "
            f"dead-lettered, {self.replayed_for_state:,} re-read for state) in "
            f"{self.seconds:.1f} s"
        )


@dataclass(slots=True)
class _Entry:
    """One transactions-topic message of the batch being processed."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    row: dict[str, Any] | None = None
    epoch: int = 0
    rejected: m.Rejected | None = None


@dataclass
class _Outcome:
    """What the model boundary made of a batch's entries to score."""

    entries: list[_Entry]  # to decide, in order
    features: list[dict[str, float]]
    scored: Scored | None  # None: the decision deadline passed, ``fallback_decision`` applies
    refused: list[_Entry] = field(default_factory=list)  # the model refused them: dead letters

    @property
    def fallback(self) -> bool:
        return self.scored is None


@dataclass(slots=True)
class _DeadLetterSend:
    """A dead letter sent for ``entry``: the send's future, or the refusal ``send()`` raised."""

    entry: _Entry
    future: Any = None
    error: BaseException | None = None

    def refusal(self) -> BaseException | None:
        """Why the record itself was refused (``_refused_for_itself``), once it is done."""
        if self.error is not None:
            return self.error
        fut = self.future
        if fut.is_done and fut.failed() and _refused_for_itself(fut.exception):
            return fut.exception
        return None


def _refused_for_itself(err: BaseException) -> bool:
    """Whether a produce failed because of the record it sent (too large for the client's
    max_request_size or the broker's max.message.bytes, rejected by broker-side validation):
    sending the same record again can never succeed, a smaller one can."""
    from kafka import errors

    return isinstance(
        err,
        errors.MessageSizeTooLargeError
        | errors.RecordListTooLargeError
        | errors.InvalidRecordError,
    )


class _StageClock:
    """Wall time of each stage of one batch, for the slow-batch log."""

    def __init__(self, started: float) -> None:
        self.started = self._last = started
        self.stages: list[tuple[str, float]] = []

    def mark(self, stage: str) -> None:
        now = time.monotonic()
        self.stages.append((stage, now - self._last))
        self._last = now

    def total(self) -> float:
        return time.monotonic() - self.started

    def describe(self) -> str:
        parts = [f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.stages]
        return ", ".join([*parts, f"total {self.total() * 1000:.0f} ms"])


class StreamConsumer:
    """Owns the Kafka clients and the per-partition state; ``run()`` until stopped or done."""

    def __init__(
        self,
        config: ConsumerConfig,
        scorer: Scorer,
        metrics: StreamMetrics | None = None,
        drift: Any | None = None,
    ) -> None:
        self.config = config
        self.scorer = scorer
        # monitoring.loop.DriftLoop: drift checks and the retrain trigger, fed with
        # every decided batch (None: no monitoring).
        self.drift = drift
        self.metrics = metrics or StreamMetrics()
        self.summary = ConsumerSummary()
        self.router = LabelRouter()
        self.store = SnapshotStore(config.state_dir, fsync=config.fsync_snapshots)
        self._writer: SnapshotWriter | None = None
        self._stop = threading.Event()
        self._in_batch = False
        self._abort_batch = False
        # True while the engines hold updates whose outputs are not all acknowledged yet: such
        # state must never be snapshotted (a restore seeks to the snapshot's offset, so it would
        # skip messages without a decision). Acknowledged is enough, committed or not: a
        # snapshot ahead of the committed offset is restored from its own offset.
        self._dirty = False
        # Set when the last asynchronous offset commit is answered (None: nothing in flight).
        self._commit_done: threading.Event | None = None
        self._last_snapshot = 0.0
        self._warned_delay: set[int] = set()
        self._consumer: Any = None
        self._producer: Any = None
        self._gc = GcPolicy(config.gc_full_interval_s)
        self.health = ConsumerHealth()
        # Fallback-decided transactions awaiting their re-score, per partition in offset order
        # (see ``_keep_for_rescore``), and when the model server is next asked for them.
        self._backlog: dict[int, list[tuple[_Entry, dict[str, float]]]] = {}
        self._backlog_size = 0
        self._rescore_at = 0.0
        self._rescore_delay = config.retry_initial_s
        # When the model server was first found unavailable in the current outage (None: up).
        self._hold_started: float | None = None
        self._last_unavailable_log = float("-inf")
        self._labels_dropped_seen = 0
        self._last_dropped_log = float("-inf")
        self._labels: LabelFeed | None = None
        self._dataset: ConsumedDataset | None = None
        self._assigned_at: float | None = None
        # Set by the rebalance callback, applied by the loop right after poll() returns:
        # kafka-python 3 runs callbacks on its IO thread, where blocking calls are not allowed.
        self._pending_assignment: set[Any] | None = None
        # Per owned partition: the next offset to read, i.e. where it was restored to, then
        # past the last record polled (sought again at each assignment; the lag's position).
        self._positions: dict[Any, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit (safe from signal handlers)."""
        self._stop.set()

    def run(self) -> ConsumerSummary:
        start = time.monotonic()
        gc_log = GcPauseLog(self.config.slow_batch_s / 4)
        gc.callbacks.append(gc_log)
        try:
            with self._gc:
                self._open()
                self._loop()
        finally:
            gc.callbacks.remove(gc_log)
            self.summary.seconds = time.monotonic() - start
            self._close()
        log.info("consumer done: %s", self.summary.describe())
        return self.summary

    def _open(self) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

        cfg = self.config
        if not has_c_crc32c():
            log.warning(
                "the crc32c package is not installed: kafka-python checksums every record batch "
                "in pure Python, which costs a large share of the throughput (install the lock)"
            )
        common = client_config(cfg.bootstrap_servers, cfg.security)
        self._writer = SnapshotWriter(self.store)
        if cfg.write_dataset:
            self._dataset = ConsumedDataset(cfg.state_dir, cfg.group_id)
        self._producer = KafkaProducer(
            **common,
            acks="all",
            # Every batch ends with flush(), which sends at once; a long linger keeps the sender
            # thread from waking (and taking the GIL) for every few records in between.
            linger_ms=1000,
            batch_size=256 * 1024,
            max_request_size=8 * 1024 * 1024,
            metrics_enabled=False,
        )
        self._labels = LabelFeed(
            common,
            cfg.topics.labels,
            self.router,
            self.metrics,
            self._dataset,
            fetch_max_wait_ms=cfg.labels_fetch_max_wait_ms,
        )
        if self.drift is not None:
            self._labels.on_labels = self.drift.add_labels
        self._labels.start()
        self._consumer = KafkaConsumer(
            **common,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            # Every assigned partition is sought to its restored position; the reset applies to
            # an offset out of range only, which ``_out_of_range`` reports.
            auto_offset_reset="earliest",
            max_poll_records=cfg.batch_size,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            # Tansu completes a group join only after the session timeout of a departed member;
            # 10 s (not Kafka's 45 s) keeps restarts quick and still tolerates GC pauses.
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            metrics_enabled=False,
        )
        topics = cfg.topics
        for topic in (topics.transactions, topics.decisions, topics.alerts, topics.dead_letter):
            # A clear error now rather than a send that blocks on metadata and then times out.
            partitions_of(self._consumer, topic, 30.0)
        owner = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                owner._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                owner._on_assigned(assigned)

        self._consumer.subscribe([cfg.topics.transactions], listener=_Listener())

    def _close(self) -> None:
        errors: list[BaseException] = []
        if self._consumer is not None:
            try:
                self._await_commit()  # the last offsets must land before the group is left
            except RuntimeError as err:
                errors.append(err)
        if self._consumer is not None and not self._dirty:
            try:
                self._snapshot_all(force=True)
            except (OSError, ValueError, RuntimeError) as err:
                errors.append(err)
        for name, closer in (
            ("producer", lambda: self._producer and self._producer.close(timeout=30)),
            ("consumer", lambda: self._consumer and self._consumer.close(autocommit=False)),
            ("labels clients", lambda: self._labels and self._labels.close()),
            ("dataset", lambda: self._dataset and self._dataset.close()),
            ("snapshot writer", lambda: self._writer and self._writer.close()),
            ("drift state", lambda: self.drift is not None and self.drift.save()),
        ):
            try:
                closer()
            except Exception as err:  # close everything, then report the first failure
                log.error("closing the %s failed: %s", name, err)
                errors.append(err)
        if errors:
            raise RuntimeError(f"consumer shutdown failed: {errors[0]}") from errors[0]

    # -- rebalancing -------------------------------------------------------------------------
    def _on_revoked(self, revoked: Any) -> None:
        """Runs on kafka-python's IO thread: file IO only, no blocking Kafka calls."""
        self._assigned_at = None  # a rebalance in progress is not idleness
        if not self._dirty:
            # The state matches the committed offsets: hand it over exactly.
            self._snapshot_all(force=True)
        elif self._writer is not None:
            # Queued older snapshots must land before the partitions' next owner writes its own.
            self._writer.flush()
        self._drop_backlog(tp.partition for tp in revoked)
        for tp in revoked:
            self.router.partitions.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # no lag was reported for it yet
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def _on_assigned(self, assigned: Any) -> None:
        # Paused until the loop has set their positions (``_apply_assignment``): kafka-python
        # would otherwise start fetching them from the committed offsets.
        self._consumer.pause(*assigned)
        self.metrics.rebalances.inc()
        if self._in_batch:
            self._abort_batch = True  # a held batch is re-read from the restored positions
        self._pending_assignment = set(assigned)

    def _apply_assignment(self) -> None:
        """Restore state for newly assigned partitions, seek every assigned partition to where
        its state goes on (partitions kept across the rebalance keep theirs) and resume them."""
        assigned, self._pending_assignment = self._pending_assignment or set(), None
        if self._dirty:
            # Feature updates that no commit covers: restore everything owned from snapshots.
            self.router.partitions.clear()
            self._drop_backlog(list(self._backlog))
            self._dirty = False
        for tp in list(self._positions):
            if tp not in assigned or tp.partition not in self.router.partitions:
                del self._positions[tp]
        for partition in [
            p for p in self.router.partitions if p not in {tp.partition for tp in assigned}
        ]:
            del self.router.partitions[partition]
        positions = self._labels.positions() if self._labels else {}
        new = [tp for tp in assigned if tp.partition not in self.router.partitions]
        for state in self.router.partitions.values():
            state.delivered_positions = dict(positions)
        for tp in new:
            self.router.partitions[tp.partition] = self._restore(tp)
        for tp in assigned:
            self._consumer.seek(tp, self._positions[tp])
        self._consumer.resume(*assigned)
        if new and self._labels is not None:
            self._labels.rewind()
            # The re-read is part of taking the partitions over, as restoring their snapshots
            # is: the first batch's barrier then reads only the labels appended since.
            self._labels.drain()
        self.metrics.assigned_partitions.set(len(assigned))
        # Everything alive now (modules, clients, restored engines) lives as long as the process:
        # collected once and frozen, see GcPolicy.
        self._gc.full()
        self._assigned_at = time.monotonic()
        log.info(
            "assigned %s",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "nothing",
        )

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
            self._positions[tp] = snap.next_offset
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
            self._positions[tp] = self._earliest(tp)
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
            self._positions[tp] = self._earliest(tp)
        return state

    def _earliest(self, tp: Any) -> int:
        return self._consumer.beginning_offsets([tp])[tp]

    # -- main loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.config
        last_data = time.monotonic()
        while not self._stop.is_set():
            self.health.beat()
            if self._pending_assignment is not None:  # from a poll during a scoring hold
                self._apply_assignment()
            self._rescore_backlog()
            max_records = cfg.batch_size
            if cfg.max_messages is not None:
                remaining = cfg.max_messages - self.summary.consumed
                if remaining <= 0:
                    return
                max_records = min(max_records, remaining)
            polled = time.monotonic()
            records = self._fetch(max_records)
            poll_s = time.monotonic() - polled
            if not records:
                # Idle time counts from the first assignment: joining the group is not idleness.
                if (
                    cfg.exit_when_idle_s is not None
                    and self._assigned_at is not None
                    and not self._backlog_size
                ):
                    since = max(last_data, self._assigned_at)
                    if time.monotonic() - since >= cfg.exit_when_idle_s:
                        log.info("idle for %.1f s: exiting", cfg.exit_when_idle_s)
                        return
                continue
            started = last_data = time.monotonic()
            assert self._labels is not None
            # The labels barrier: every label appended before these transactions is handed to
            # the router before they are featurised (streaming.labels).
            self._labels.drain()
            self._process(records, poll_s, started)
            self._update_lag()
            self._gc.after_batch()

    def _fetch(self, max_records: int) -> dict[Any, list[Any]]:
        """The next batch: up to ``max_records`` transactions of the owned partitions, in offset
        order per partition; empty when none came or the assignment changed."""
        records = self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms, max_records=max_records
        )
        if self._pending_assignment is not None:
            self._apply_assignment()
            return {}  # polled before the seeks: read again from the positions just set
        for tp, msgs in records.items():
            expected = self._positions.get(tp)
            if expected is not None and msgs[0].offset != expected:
                self._out_of_range(tp, expected, msgs[0].offset)
            self._positions[tp] = msgs[-1].offset + 1
        return records

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
        if start > expected:
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

    def _process(self, records: dict[Any, list[Any]], poll_s: float, started: float) -> None:
        """Decide one polled batch; the labels were drained since ``started``."""
        cfg = self.config
        if self.summary.first_batch_at is None:
            self.summary.first_batch_at = started
        self._in_batch = True
        self._abort_batch = False
        stages = _StageClock(started)
        try:
            stages.mark("labels")
            entries = self._parse(records)
            stages.mark("parse")
            if not entries:
                return
            scored_entries, features, dead = self._features(entries)
            stages.mark("features")
            outcome: _Outcome | None = None
            if scored_entries:
                outcome = self._score_with_hold(scored_entries, features)
                stages.mark("score")
                if outcome is None:
                    self.summary.aborted_batches += 1
                    return  # stopping, or the partitions moved: the batch will be re-read
                dead += outcome.refused
            decided = outcome.entries if outcome is not None else []
            # At most one batch may have outputs whose commit has not landed: a crash then
            # re-decides only that one. The previous commit was sent a whole batch ago.
            self._await_commit()
            stages.mark("prev_commit")
            futures = self._produce(
                decided,
                outcome.features if outcome is not None else [],
                outcome.scored if outcome is not None else None,
                dead,
            )
            stages.mark("produce")
            if self.drift is not None and outcome is not None and outcome.scored is not None:
                futures += self._observe_drift(decided, outcome.features, outcome.scored)
                stages.mark("drift")
            self._await_acks(futures)
            stages.mark("acks")
            if outcome is not None and outcome.fallback:
                self._keep_for_rescore(outcome)
            acked_ms = time.time() * 1000
            self.metrics.end_to_end_latency.observe_many(
                [max(0.0, acked_ms - e.timestamp_ms) / 1000 for e in decided]
            )
            if self._dataset is not None:
                self._dataset.append_transactions(e.row for e in decided)  # type: ignore[misc]
                self._dataset.flush()
                stages.mark("dataset")
            if self._commit(records):
                self._dirty = False
                self.summary.last_commit_at = time.monotonic()
                stages.mark("commit")
                self._snapshot_all(force=cfg.snapshot_interval_s == 0)
                stages.mark("snapshot")
            self.summary.batches += 1
            self.metrics.batch_size.observe(len(entries))
            self.metrics.batch_duration.observe(time.monotonic() - started)
        finally:
            self._in_batch = False
            if stages.total() + poll_s >= cfg.slow_batch_s:
                # Where a stall went, so a latency spike in the metrics can be explained. The
                # ages are how old the fetched messages already were when poll() returned them:
                # latency spent before this consumer saw them (broker, fetch pipelining).
                # ``started`` is when poll() returned, before the labels drain.
                polled_ms = (time.time() - (time.monotonic() - started)) * 1000
                ages = [
                    polled_ms - msgs[i].timestamp
                    for msgs in records.values()
                    if msgs
                    for i in (0, -1)
                ]
                log.warning(
                    "slow batch: %d message(s), poll %.0f ms, age at poll %.0f-%.0f ms, %s; "
                    "labels drain %s",
                    sum(len(v) for v in records.values()),
                    poll_s * 1000,
                    min(ages, default=0),
                    max(ages, default=0),
                    stages.describe(),
                    self._labels.last_drain if self._labels is not None else {},
                )

    def _parse(self, records: dict[Any, list[Any]]) -> list[_Entry]:
        """Entries in per-partition offset order, each with a row or a rejection."""
        entries: list[_Entry] = []
        max_bytes = self.config.max_message_bytes
        for tp, msgs in records.items():
            state = self.router.partitions.get(tp.partition)
            if state is None:
                continue  # revoked while these were in flight: the new owner reads them
            for msg in msgs:
                if state.next_offset is not None and msg.offset < state.next_offset:
                    continue  # already applied to the state (a re-fetch after a seek)
                entry = _Entry(tp.partition, msg.offset, msg.timestamp, msg.key, msg.value)
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
            # Repeated ids are judged in ``_features``, in offset order, within and across
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

    def _features(
        self, entries: list[_Entry]
    ) -> tuple[list[_Entry], list[dict[str, float]], list[_Entry]]:
        """Advance each partition's state; returns (to score, their features, to dead-letter).

        The skew rule: a transaction more than ``max_event_time_skew_s`` plus the log clock's
        advance (``_too_far_ahead``) beyond its partition's event time is dead-lettered and
        moves nothing. Messages re-read for state only obey it too, so a restart rebuilds the
        same state."""
        to_score: list[_Entry] = []
        features: list[dict[str, float]] = []
        dead: list[_Entry] = []
        self._dirty = True
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

    def _too_far_ahead(self, state: PartitionState, e: _Entry, log_ms: int) -> m.Rejected | None:
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

    # -- scoring -----------------------------------------------------------------------------
    def _score_with_hold(
        self, entries: list[_Entry], features: list[dict[str, float]]
    ) -> _Outcome | None:
        """Score the batch: rows the model refuses become dead letters, an unavailable server is
        retried with backoff until it answers or the decision deadline passes (then the batch
        is decided with the fallback and kept for its re-score); None: stopping or rebalanced,
        the batch will be read again."""
        inputs = self._model_inputs(entries, features)
        cfg = self.config
        delay = cfg.retry_initial_s
        held_since = time.monotonic()
        try:
            while True:
                try:
                    scored, kept, refused = self.scorer.score_isolating(inputs, len(entries))
                except ScoringUnavailable as err:
                    held_s = time.monotonic() - held_since
                    self._note_unavailable(err, len(entries), held_s)
                    if self._may_fall_back(held_s, len(entries)):
                        return _Outcome(entries, features, None)
                    if not self._wait_keeping_membership(delay):
                        return None
                    delay = min(delay * 2, cfg.retry_max_s)
                    continue
                self._scoring_recovered()
                return self._outcome(entries, features, scored, kept, refused)
        finally:
            self.metrics.held_seconds.set(0)

    def _outcome(
        self,
        entries: list[_Entry],
        features: list[dict[str, float]],
        scored: Scored | None,
        kept: list[int],
        refused: dict[int, str],
    ) -> _Outcome:
        if scored is not None:
            self.metrics.scoring_latency.observe(scored.latency_s)
            self.metrics.model_version.labels(self.config.model_name).set(scored.version)
            self._check_delay(scored)
        dead = []
        for i, why in sorted(refused.items()):
            entry = entries[i]
            entry.rejected = m.Rejected(m.MODEL_REJECTED, why)
            dead.append(entry)
        if dead:
            log.warning(
                "the model refused %d transaction(s), dead-lettered; first: %s",
                len(dead),
                dead[0].rejected.reason,  # type: ignore[union-attr]
            )
        if len(kept) == len(entries):
            return _Outcome(entries, features, scored, dead)
        return _Outcome([entries[i] for i in kept], [features[i] for i in kept], scored, dead)

    def _note_unavailable(self, err: Exception, rows: int, held_s: float) -> None:
        """Count and report a failed scoring attempt; an outage longer than the lag bound turns
        readiness red until the server answers again."""
        now = time.monotonic()
        self.metrics.scoring_failures.inc()
        self.metrics.held_seconds.set(held_s)
        if self._hold_started is None:
            self._hold_started = now - held_s
        if now - self._last_unavailable_log >= 10:
            self._last_unavailable_log = now
            log.warning(
                "scoring unavailable for %.1f s; %d transactions held, %d awaiting a re-score "
                "after a fallback decision: %s",
                now - self._hold_started,
                rows,
                self._backlog_size,
                err,
            )
        outage_s = now - self._hold_started
        if outage_s > self.config.lag_bound_s and self.health.scoring_ok:
            self.metrics.hold_bound_exceeded.inc()
            self.health.scoring_failed(
                f"model server unavailable for {outage_s:.0f} s, over the "
                f"{self.config.lag_bound_s:.0f} s lag bound: {err}"
            )
            log.error(
                "model server unavailable for %.0f s, over the %.0f s lag bound: not ready; "
                "still retrying (nothing is dropped)",
                outage_s,
                self.config.lag_bound_s,
            )

    def _may_fall_back(self, held_s: float, rows: int) -> bool:
        deadline = self.config.decision_deadline_s
        if deadline is None:
            return False
        if self._backlog_size + rows > self.config.max_fallback_backlog:
            return False  # hold instead: the backlog keeps what it has, nothing is dropped
        # While earlier transactions await their re-score the server is known to be down: a
        # new batch that fails once falls back at once instead of waiting out the deadline.
        return held_s >= deadline or self._backlog_size > 0

    def _keep_for_rescore(self, outcome: _Outcome) -> None:
        """Keep fallback-decided transactions for their re-score.

        Until it is done, a partition's committed offset stays at its oldest such transaction
        and the partition is not snapshotted: a restart, or the partition's next owner, decides
        them again from there, so a fallback decision is never left without a score.
        """
        for e, feats in zip(outcome.entries, outcome.features, strict=True):
            self._backlog.setdefault(e.partition, []).append((e, feats))
        self._backlog_size += len(outcome.entries)
        self.metrics.fallback_backlog.set(self._backlog_size)

    def _drop_backlog(self, partitions: Any) -> None:
        """Forget the backlog of partitions this consumer no longer owns (their next owner
        re-decides from the committed offset)."""
        for p in list(partitions):
            self._backlog_size -= len(self._backlog.pop(p, ()))
        self.metrics.fallback_backlog.set(self._backlog_size)

    def _rescore_backlog(self) -> None:
        """Re-score up to a batch of fallback-decided transactions, oldest first, and send the
        scores as corrections; the model server is asked again with backoff while it is down."""
        if not self._backlog_size or time.monotonic() < self._rescore_at:
            return
        cfg = self.config
        taken: dict[int, int] = {}
        entries: list[_Entry] = []
        features: list[dict[str, float]] = []
        for p, items in self._backlog.items():
            room = cfg.batch_size - len(entries)
            if room <= 0:
                break
            for e, feats in items[:room]:
                entries.append(e)
                features.append(feats)
            taken[p] = min(room, len(items))
        try:
            scored, kept, refused = self.scorer.score_isolating(
                self._model_inputs(entries, features), len(entries)
            )
        except ScoringUnavailable as err:
            self._note_unavailable(err, len(entries), 0.0)
            self._rescore_at = time.monotonic() + self._rescore_delay
            self._rescore_delay = min(self._rescore_delay * 2, cfg.retry_max_s)
            return
        self._rescore_delay = cfg.retry_initial_s
        self._scoring_recovered()
        outcome = self._outcome(entries, features, scored, kept, refused)
        self._await_commit()
        self._await_acks(
            self._produce(
                outcome.entries, outcome.features, scored, outcome.refused, correction=True
            )
        )
        for p, n in taken.items():
            del self._backlog[p][:n]
            if not self._backlog[p]:
                del self._backlog[p]
        self._backlog_size -= len(entries)
        self.metrics.fallback_backlog.set(self._backlog_size)
        log.info(
            "re-scored %d fallback decision(s) (%d left)", len(outcome.entries), self._backlog_size
        )
        from kafka.structs import TopicPartition

        self._commit({TopicPartition(cfg.topics.transactions, p): None for p in taken})

    def _scoring_recovered(self) -> None:
        if self._hold_started is not None:
            log.info(
                "model server answers again after %.1f s", time.monotonic() - self._hold_started
            )
        self._hold_started = None
        self.health.scoring_recovered()

    def _wait_keeping_membership(self, seconds: float) -> bool:
        """Sleep while polling the consumer, its partitions paused, so the group keeps us;
        False = give up."""
        consumer = self._consumer
        consumer.pause(*(consumer.assignment() or ()))
        try:
            deadline = time.monotonic() + seconds
            while True:
                self.health.beat()
                if self._stop.is_set() or self._abort_batch:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                polled = consumer.poll(timeout_ms=int(min(left, 0.2) * 1000) or 1)
                if self._abort_batch:
                    return False  # rebalanced: records of new partitions are fetched again
                if polled:  # cannot happen while paused; refuse to lose messages silently
                    raise RuntimeError("paused consumer returned records during a scoring hold")
        finally:
            # What was fetched meanwhile stays buffered and is handed out after the resume. A
            # new assignment is resumed once its positions are set.
            if self._pending_assignment is None:
                consumer.resume(*(consumer.assignment() or ()))

    def _model_inputs(
        self, entries: list[_Entry], features: list[dict[str, float]]
    ) -> dict[str, list[Any]]:
        inputs: dict[str, list[Any]] = {}
        for name in c.MODEL_INPUTS:
            if name in c.RAW_MODEL_INPUTS:
                inputs[name] = [e.row[name] for e in entries]  # type: ignore[index]
            else:
                inputs[name] = [f[name] for f in features]
        return inputs

    def _observe_drift(
        self, entries: list[_Entry], features: list[dict[str, float]], scored: Scored
    ) -> list[Any]:
        events = self.drift.observe(
            scored.version,
            {n: [f[n] for f in features] for n in c.STATEFUL_FEATURES}
            | {c.AMOUNT: [e.row[c.AMOUNT] for e in entries]},  # type: ignore[index]
            scored.scores,
            [scored.thresholds.decide(s) for s in scored.scores],
            [e.epoch for e in entries],
            [e.row[c.TRANSACTION_ID] for e in entries],  # type: ignore[index]
        )
        topic = self.config.topics.drift_events
        return [
            self._producer.send(topic, key=ev.kind.encode(), value=m.encode(ev.to_message()))
            for ev in events
        ]

    def _check_delay(self, scored: Scored) -> None:
        model_delay = scored.thresholds.label_delay_days
        if (
            model_delay is not None
            and model_delay != self.config.label_delay_days
            and scored.version not in self._warned_delay
        ):
            self._warned_delay.add(scored.version)
            log.error(
                "model version %d was trained with a label delay of %d days but this consumer "
                "computes terminal features with %d: its scores are off; restart with "
                "--label-delay-days %d",
                scored.version,
                model_delay,
                self.config.label_delay_days,
                model_delay,
            )

    # -- output ------------------------------------------------------------------------------
    def _produce(
        self,
        entries: list[_Entry],
        features: list[dict[str, float]],
        scored: Scored | None,
        dead: list[_Entry],
        correction: bool = False,
    ) -> list[Any]:
        """Send the decisions of ``entries`` (scored, or the fallback when ``scored`` is None;
        ``correction``: re-scores of fallback decisions), their alerts, and the dead letters."""
        cfg = self.config
        topics = cfg.topics
        producer = self._producer
        futures: list[Any] = []
        f = m.DecisionFields
        if entries:
            fallback = scored is None
            if scored is None:
                scores: list[float | None] = [None] * len(entries)
                thresholds = None
                scoring_ms = None
                version = None
            else:
                scores = list(scored.scores)
                th = scored.thresholds
                thresholds = {c.REVIEW: th.review, c.BLOCK: th.block}
                scoring_ms = round(scored.latency_s * 1000, 3)
                version = scored.version
            now_ms = time.time() * 1000
            decided_at = m.now_iso()
            # Per-batch constants out of the per-message loop (at ~10k messages/s each lookup
            # shows in a profile).
            model_name = cfg.model_name
            decisions_topic, alerts_topic, approve = topics.decisions, topics.alerts, c.APPROVE
            counts = dict.fromkeys(c.DECISIONS, 0)
            for e, feats, score in zip(entries, features, scores, strict=True):
                row = e.row
                assert row is not None
                decision = cfg.fallback_decision if score is None else th.decide(score)
                counts[decision] += 1
                payload = {
                    c.TRANSACTION_ID: row[c.TRANSACTION_ID],
                    c.TIMESTAMP: row[c.TIMESTAMP],
                    c.CUSTOMER_ID: row[c.CUSTOMER_ID],
                    c.TERMINAL_ID: row[c.TERMINAL_ID],
                    c.AMOUNT: row[c.AMOUNT],
                    f.SCORE: score,
                    f.DECISION: decision,
                    f.MODEL_NAME: model_name,
                    f.MODEL_VERSION: version,
                    f.THRESHOLDS: thresholds,
                    f.SCORING_MS: scoring_ms,
                    f.END_TO_END_MS: round(now_ms - e.timestamp_ms, 3),
                    f.DECIDED_AT: decided_at,
                    f.FALLBACK: fallback,
                    f.CORRECTION: correction,
                }
                if cfg.include_features:
                    payload[f.FEATURES] = feats
                value = m.encode(payload)
                # Partitioned by the producer's default partitioner (murmur2 of the key).
                key = row[c.TRANSACTION_ID].encode()
                futures.append(producer.send(decisions_topic, key=key, value=value))
                if decision != approve:
                    futures.append(producer.send(alerts_topic, key=key, value=value))
            self._count_decisions(scored, counts, len(entries), correction)
        for e in dead:
            assert e.rejected is not None
            futures.append(self._send_dead_letter(e, e.rejected, cfg.dead_letter_max_payload_bytes))
            self.metrics.dead_lettered.labels(e.rejected.kind).inc()
        self.summary.dead_lettered += len(dead)
        return futures

    def _count_decisions(
        self, scored: Scored | None, counts: dict[str, int], n: int, correction: bool
    ) -> None:
        if scored is not None:
            finite = [s for s in scored.scores if math.isfinite(s)]
            if len(finite) < n:
                self.metrics.nonfinite_scores.inc(n - len(finite))
                log.error(
                    "model version %d answered %d non-finite score(s): decided %s (fail-safe)",
                    scored.version,
                    n - len(finite),
                    c.FAILSAFE_DECISION,
                )
            self.metrics.score.observe_many(finite)
        else:
            self.metrics.fallback_decisions.inc(n)
        if correction:
            self.metrics.corrections.inc(n)
            return  # the transactions were counted as decided with their fallback decision
        for decision, k in counts.items():
            if k:
                self.metrics.decisions.labels(decision).inc(k)
        self.metrics.decided.inc(n)
        self.summary.decided += n
        self.summary.alerts += counts[c.REVIEW] + counts[c.BLOCK]

    def _send_dead_letter(
        self, e: _Entry, rejected: m.Rejected, max_payload_bytes: int
    ) -> _DeadLetterSend:
        """Send ``e``'s dead letter; a refusal of this very record (see ``_refused_for_itself``)
        raised by ``send()`` is kept for ``_await_acks``, like one that fails the future."""
        topics = self.config.topics
        value = m.dead_letter(
            rejected,
            topic=topics.transactions,
            partition=e.partition,
            offset=e.offset,
            timestamp_ms=e.timestamp_ms,
            key=e.key,
            value=e.value,
            group_id=self.config.group_id,
            max_payload_bytes=max_payload_bytes,
        )
        # Keyed like the original (one customer's dead letters stay in order) unless that key
        # is what a payload cap cuts.
        key = e.key if e.key is None or len(e.key) <= max_payload_bytes else None
        try:
            return _DeadLetterSend(e, self._producer.send(topics.dead_letter, key=key, value=value))
        except Exception as err:
            if not _refused_for_itself(err):
                raise
            return _DeadLetterSend(e, error=err)

    def _await_acks(self, futures: list[Any]) -> None:
        """Wait for every output of the batch to be acknowledged; raise if one is not, except
        a dead letter refused for itself (too large, invalid record): that one is replaced by
        a dead letter without the original bytes, so one message can never stop the consumer.
        A failure that is not about the record (broker unreachable, topic missing, not
        authorised) raises: nothing of the batch is committed, the restart decides it again."""
        if not futures:
            return
        self._producer.flush(timeout=60)
        outputs: list[Any] = []
        replaced = False
        for fut in futures:
            if isinstance(fut, _DeadLetterSend):
                refusal = fut.refusal()
                replaced |= refusal is not None
                fut = fut.future if refusal is None else self._send_bare_dead_letter(fut, refusal)
            outputs.append(fut)
        if replaced:
            self._producer.flush(timeout=60)
        failed = [fut for fut in outputs if not fut.is_done or fut.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "no answer within 60 s"
            # Not committing is not enough: the state already moved past this batch. Stop; the
            # restart restores the snapshot and decides the batch again (at least once).
            raise RuntimeError(
                f"{len(failed)} of {len(futures)} output messages not acknowledged by "
                f"{self.config.bootstrap_servers}: {first}"
            )

    def _send_bare_dead_letter(self, refused: _DeadLetterSend, refusal: BaseException) -> Any:
        """Send a dead letter without the original key and value (their sizes and sha256 stay)
        in place of ``refused``; returns its future."""
        e = refused.entry
        assert e.rejected is not None
        log.error(
            "dead letter of %s[%d]@%d refused (%s: %s); sending it without the original bytes",
            self.config.topics.transactions,
            e.partition,
            e.offset,
            type(refusal).__name__,
            refusal,
        )
        bare = m.Rejected(
            e.rejected.kind,
            f"original bytes left out (the dead letter with them was refused: "
            f"{type(refusal).__name__}); {e.rejected.reason}",
        )
        sent = self._send_dead_letter(e, bare, max_payload_bytes=0)
        if sent.error is not None:
            raise RuntimeError(
                f"dead letter of {self.config.topics.transactions}[{e.partition}]@{e.offset} "
                f"refused even without the original bytes: {sent.error}"
            ) from sent.error
        return sent.future

    def _commit(self, records: dict[Any, list[Any]]) -> bool:
        """Send the offsets after ``records`` (their outputs are acknowledged); False if they
        could not be sent. Asynchronous: the round trip (~2 ms, more under load) overlaps the
        next poll instead of lengthening every batch; ``_await_commit`` bounds what is in
        flight to one batch."""
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        offsets = {}
        for tp in records:
            state = self.router.partitions.get(tp.partition)
            # Never move a committed offset back while re-reading for state.
            if (
                state is not None
                and state.next_offset is not None
                and state.next_offset > state.silent_until
            ):
                offset = state.next_offset
                backlog = self._backlog.get(tp.partition)
                if backlog:  # fallback decisions awaiting their re-score are re-read from here
                    offset = min(offset, backlog[0][0].offset)
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

    def _await_commit(self, timeout_s: float = 60.0) -> None:
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

    def _snapshot_all(self, force: bool) -> None:
        """Snapshot every partition with new state: queued for the background writer, or, with
        ``force`` (shutdown, revocation), written before returning."""
        now = time.monotonic()
        if not force and now - self._last_snapshot < self.config.snapshot_interval_s:
            return
        if self._labels is None:
            return
        positions = self._labels.positions()
        started = time.monotonic()
        total = 0
        topic = self.config.topics.transactions
        if force and self._writer is not None:
            self._writer.flush()  # older queued files must not overwrite the ones written now
        for state in self.router.partitions.values():
            if state.next_offset is None or state.next_offset <= state.silent_until:
                continue  # nothing new, or still rebuilding: the old snapshot stays valid
            if state.partition in self._backlog:
                continue  # restarts must re-read the fallback decisions (_keep_for_rescore)
            blob = self.store.encode(topic, state, positions)
            if force or self._writer is None:
                self.store.write(topic, state.partition, blob)
            else:
                self._writer.submit(topic, state.partition, blob)
            total += len(blob)
            self.metrics.snapshots.inc()
        self._last_snapshot = time.monotonic()
        self.metrics.snapshot_duration.observe(self._last_snapshot - started)
        self.metrics.snapshot_bytes.set(total)

    def _update_lag(self) -> None:
        assigned = self._consumer.assignment() or set()
        for tp, position in self._positions.items():
            # The high watermark of the last fetch answer: lag, not a barrier (it may predate
            # the poll).
            high = self._consumer.highwater(tp) if tp in assigned else None
            if high is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )
