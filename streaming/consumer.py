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

With a ``shadow`` scorer (streaming.shadow), each decided batch is also handed to it, to be
scored by the ``canary`` version on its own thread; nothing waits for that, and only the
consumer owning partition 0 of the transactions topic (``rollout_decider``) may act on what it
shows (monitoring.canary).

A restart restores each partition's snapshot and seeks to its offset; messages between the
snapshot and the committed offset were decided already and are replayed through the feature
engine only, so the features after a restart equal those of an uninterrupted run and at most one
poll batch (the one in flight when the process died) is decided twice.

``StreamConsumer`` runs the loop and composes its stages, each in a module of its own:
streaming.partitions (the group poll, positions, rebalances), streaming.fetch_stage (parse,
validate, features), streaming.score_stage (the model call, its hold, fallback decisions and
their re-scores), streaming.produce_stage (outputs and their acknowledgements) and
streaming.commit_stage (offsets, snapshots); its settings and counts are in
streaming.consumer_config.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from core import contract as c
from streaming.commit_stage import Commits
from streaming.consumer_config import ConsumerConfig, ConsumerSummary
from streaming.dataset import ConsumedDataset
from streaming.fetch_stage import Entry, Intake
from streaming.gcpolicy import GcPauseLog, GcPolicy
from streaming.health import ConsumerHealth
from streaming.kafka_config import client_config, has_c_crc32c
from streaming.labels import LabelFeed, partitions_of
from streaming.metrics import StreamMetrics
from streaming.partitions import OwnedPartitions
from streaming.produce_stage import Output
from streaming.score_stage import FallbackBacklog, Outcome, ScoreStage
from streaming.scoring import Scored, Scorer
from streaming.state import LabelRouter, SnapshotStore, SnapshotWriter

if TYPE_CHECKING:
    from streaming.shadow import ShadowScorer

__all__ = ["ConsumerConfig", "ConsumerSummary", "StreamConsumer"]

log = logging.getLogger(__name__)


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
    """Owns the Kafka clients and the per-partition state; ``run()`` until stopped or done.

    The stages that use the Kafka clients (``OwnedPartitions``, ``ScoreStage``, ``Output``,
    ``Commits``) are built once the clients are open, at the start of ``run()``.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        scorer: Scorer,
        metrics: StreamMetrics | None = None,
        drift: Any | None = None,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.config = config
        self.scorer = scorer
        # monitoring.loop.DriftLoop: drift checks and the retrain trigger, fed with
        # every decided batch (None: no monitoring).
        self.drift = drift
        # Shadow scoring of every decided batch with the canary (None: off).
        self.shadow = shadow
        # Set while this consumer owns partition 0 of the transactions topic: the one replica
        # of the group that acts on rollout verdicts (monitoring.canary).
        self.rollout_decider = threading.Event()
        self.metrics = metrics or StreamMetrics()
        self.summary = ConsumerSummary()
        self.router = LabelRouter()
        self.store = SnapshotStore(config.state_dir, fsync=config.fsync_snapshots)
        self.health = ConsumerHealth()
        self._stop = threading.Event()
        self._gc = GcPolicy(config.gc_full_interval_s)
        self._intake = Intake(config, self.router, self.metrics, self.summary)
        self._backlog = FallbackBacklog(self.metrics)
        self._writer: SnapshotWriter | None = None
        self._labels: LabelFeed | None = None
        self._dataset: ConsumedDataset | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._partitions: OwnedPartitions | None = None
        self._scoring: ScoreStage | None = None
        self._output: Output | None = None
        self._commits: Commits | None = None
        self._assigned_at: float | None = None
        # Held by the loop while it changes the partitions' state (labels, features, outputs,
        # commits, snapshots). kafka-python 3 runs the revocation callback on its IO thread, at
        # any moment; the callback must not wait for this lock (the loop waits on that thread
        # for its commits), so it hands the state over only when it gets the lock at once.
        self._state_lock = threading.Lock()

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
        listeners = [x.add_labels for x in (self.drift, self.shadow) if x is not None]
        if listeners:
            self._labels.on_labels = lambda labels: [listen(labels) for listen in listeners]
        self._labels.start()
        if self.shadow is not None:
            self.shadow.start(self._producer)
        self._consumer = KafkaConsumer(
            **common,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            # Every assigned partition is sought to its restored position; the reset applies to
            # an offset out of range only, which ``OwnedPartitions`` reports.
            auto_offset_reset="earliest",
            max_poll_records=cfg.batch_size,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            # Tansu completes a group join only after the session timeout of a departed member;
            # 10 s (not Kafka's 45 s) keeps restarts quick and still tolerates GC pauses.
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            metrics_enabled=False,
        )
        self._open_stages()
        topics = cfg.topics
        for topic in (topics.transactions, topics.decisions, topics.alerts, topics.dead_letter):
            # A clear error now rather than a send that blocks on metadata and then times out.
            partitions_of(self._consumer, topic, 30.0)
        owner = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                owner._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                owner._partitions.on_assigned(assigned)

        self._consumer.subscribe([cfg.topics.transactions], listener=_Listener())

    def _open_stages(self) -> None:
        """The stages that use the Kafka clients, once those are open."""
        cfg = self.config
        self._partitions = OwnedPartitions(
            cfg, self._consumer, self.router, self.store, self.metrics, self.health, self._stop
        )
        self._scoring = ScoreStage(
            cfg, self.scorer, self.metrics, self.health, self._backlog, self._partitions.hold
        )
        self._output = Output(cfg, self._producer, self.metrics, self.summary)
        self._commits = Commits(
            cfg,
            self._consumer,
            self.router,
            self.store,
            self._writer,
            self._labels,
            self._backlog,
            self.metrics,
        )

    def _close(self) -> None:
        errors: list[BaseException] = []
        if self.shadow is not None:
            self.shadow.close()
        if self._commits is not None:
            try:
                self._commits.await_commit()  # the last offsets must land before the group is left
            except RuntimeError as err:
                errors.append(err)
            with self._state_lock:
                if not self._commits.dirty:
                    try:
                        self._release(self._partitions.take_revoked())
                        self._commits.snapshot_all(force=True)
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
        if any(tp.partition == 0 for tp in revoked):
            self.rollout_decider.clear()
        if not self._state_lock.acquire(blocking=False):
            # A batch is changing the state: a snapshot of it now would not be a consistent
            # cut (it could cover messages whose decisions are not out). The snapshots on disk
            # stay valid; the loop lets go of these partitions once its batch is over.
            self._partitions.note_revoked(revoked)
            self._commits.flush_snapshots()
            return
        try:
            self._commits.hand_over()
            self._release(revoked)
        finally:
            self._state_lock.release()

    def _release(self, revoked: Any) -> None:
        """Forget the state and the fallback backlog of partitions no longer owned."""
        self._backlog.drop(tp.partition for tp in revoked)
        self._partitions.forget(revoked)

    def _apply_assignment(self) -> None:
        """Take over the assignment the rebalance callback recorded (``OwnedPartitions``):
        restore, seek and resume the partitions, and re-read the labels for new ones."""
        with self._state_lock:
            self._release(self._partitions.take_revoked())
            self._take_assignment(self._partitions.take_pending())

    def _take_assignment(self, assigned: set[Any]) -> None:
        if self._commits.dirty:
            # Feature updates that no commit covers: restore everything owned from snapshots.
            self.router.partitions.clear()
            self._backlog.drop(self._backlog.partitions())
            self._commits.dirty = False
        new = self._partitions.assign(assigned, self._labels.positions() if self._labels else {})
        if new and self._labels is not None:
            self._labels.rewind()
            # The re-read is part of taking the partitions over, as restoring their snapshots
            # is: the first batch's barrier then reads only the labels appended since.
            self._labels.drain()
        self.metrics.assigned_partitions.set(len(assigned))
        if any(tp.partition == 0 for tp in assigned):
            self.rollout_decider.set()
        else:
            self.rollout_decider.clear()
        # Everything alive now (modules, clients, restored engines) lives as long as the process:
        # collected once and frozen, see GcPolicy.
        self._gc.full()
        self._assigned_at = time.monotonic()
        log.info(
            "assigned %s",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)) or "nothing",
        )

    # -- main loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.config
        last_data = time.monotonic()
        while not self._stop.is_set():
            self.health.beat()
            if self._partitions.pending:  # from a poll during a scoring hold
                self._apply_assignment()
            with self._state_lock:
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
                    and not self._backlog.size
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
            with self._state_lock:
                self._labels.drain()
                self._process(records, poll_s, started)
            self._partitions.update_lag()
            self._gc.after_batch()

    def _fetch(self, max_records: int) -> dict[Any, list[Any]]:
        """The next batch: up to ``max_records`` transactions of the owned partitions, in offset
        order per partition; empty when none came or the assignment changed."""
        records = self._partitions.poll(max_records)
        if records is None:
            self._apply_assignment()
            return {}  # polled before the seeks: read again from the positions just set
        return records

    def _process(self, records: dict[Any, list[Any]], poll_s: float, started: float) -> None:
        """Decide one polled batch; the labels were drained since ``started``."""
        cfg = self.config
        if self.summary.first_batch_at is None:
            self.summary.first_batch_at = started
        self._partitions.begin_batch()
        stages = _StageClock(started)
        try:
            stages.mark("labels")
            entries = self._intake.parse(records)
            stages.mark("parse")
            if not entries:
                return
            self._commits.dirty = True
            scored_entries, features, dead = self._intake.featurise(entries)
            stages.mark("features")
            outcome: Outcome | None = None
            if scored_entries:
                outcome = self._scoring.score(scored_entries, features)
                stages.mark("score")
                if outcome is None:
                    self.summary.aborted_batches += 1
                    return  # stopping, or the partitions moved: the batch will be re-read
                dead += outcome.refused
            decided = outcome.entries if outcome is not None else []
            # At most one batch may have outputs whose commit has not landed: a crash then
            # re-decides only that one. The previous commit was sent a whole batch ago.
            self._commits.await_commit()
            stages.mark("prev_commit")
            futures = self._output.produce(
                decided,
                outcome.features if outcome is not None else [],
                outcome.scored if outcome is not None else None,
                dead,
            )
            stages.mark("produce")
            if self.shadow is not None and outcome is not None and outcome.scored is not None:
                self.shadow.submit(decided, outcome.features, outcome.scored)
            if self.drift is not None and outcome is not None and outcome.scored is not None:
                futures += self._observe_drift(decided, outcome.features, outcome.scored)
                stages.mark("drift")
            self._output.await_acks(futures)
            stages.mark("acks")
            if outcome is not None and outcome.fallback:
                self._backlog.keep(outcome)
            acked_ms = time.time() * 1000
            self.metrics.end_to_end_latency.observe_many(
                [max(0.0, acked_ms - e.timestamp_ms) / 1000 for e in decided]
            )
            if self._dataset is not None:
                self._dataset.append_transactions(e.row for e in decided)  # type: ignore[misc]
                self._dataset.flush()
                stages.mark("dataset")
            if self._commits.commit(records):
                self._commits.dirty = False
                self.summary.last_commit_at = time.monotonic()
                stages.mark("commit")
                # Revoked during the batch: their next owner restores the snapshots on disk.
                self._release(self._partitions.take_revoked())
                self._commits.snapshot_all(force=cfg.snapshot_interval_s == 0)
                stages.mark("snapshot")
            self.summary.batches += 1
            self.metrics.batch_size.observe(len(entries))
            self.metrics.batch_duration.observe(time.monotonic() - started)
        finally:
            self._partitions.end_batch()
            if stages.total() + poll_s >= cfg.slow_batch_s:
                self._log_slow_batch(records, poll_s, started, stages)

    def _log_slow_batch(
        self, records: dict[Any, list[Any]], poll_s: float, started: float, stages: _StageClock
    ) -> None:
        """Where a stall went, so a latency spike in the metrics can be explained. The ages are
        how old the fetched messages already were when poll() returned them: latency spent
        before this consumer saw them (broker, fetch pipelining). ``started`` is when poll()
        returned, before the labels drain."""
        polled_ms = (time.time() - (time.monotonic() - started)) * 1000
        ages = [polled_ms - msgs[i].timestamp for msgs in records.values() if msgs for i in (0, -1)]
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

    def _rescore_backlog(self) -> None:
        """Send the re-scores of fallback-decided transactions (``ScoreStage.rescore_due``) as
        corrections, then commit their partitions past them."""
        rescore = self._scoring.rescore_due()
        if rescore is None:
            return
        outcome = rescore.outcome
        self._commits.await_commit()
        self._output.await_acks(
            self._output.produce(
                outcome.entries, outcome.features, outcome.scored, outcome.refused, correction=True
            )
        )
        self._backlog.release(rescore.taken)
        log.info(
            "re-scored %d fallback decision(s) (%d left)", len(outcome.entries), self._backlog.size
        )
        from kafka.structs import TopicPartition

        topic = self.config.topics.transactions
        self._commits.commit(TopicPartition(topic, p) for p in rescore.taken)

    def _observe_drift(
        self, entries: list[Entry], features: list[dict[str, float]], scored: Scored
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
        return self._output.send_drift_events(events)
