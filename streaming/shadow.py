"""Shadow scoring: each batch the stable version decided is scored again by the version labelled
``canary``, on a worker thread, and never acted on.

* The decision path never waits for the canary: ``submit`` hands the batch to a queue of
  ``max_queued`` batches and returns at once; while the worker is still busy with earlier
  batches the batch is not shadowed (counted as ``skipped``). The canary's client has its own
  short timeout, no retries and its own circuit breaker, so a slow or failing canary costs
  shadow samples, never decisions, and never holds a message.
* Which version is canary comes from the status API (``GET .../labels/canary``, cached by the
  client for ``version_refresh_s``); a 4xx answer means there is no canary, asked again after
  ``absent_recheck_s``.
* A shadow-scored batch becomes one message on the shadow-scores topic (``ShadowFields``: the
  transaction ids with both versions' scores and decisions) and is given to the ``observer``
  (monitoring.canary.CanaryController decides promotion from them); the events the observer
  returns go to the drift-events topic. Shadow records are evidence, not decisions: they are
  sent without waiting for the broker, and a failed send is counted and logged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core import contract as c
from serving.rollout import CANARY
from streaming import messages as m
from streaming.consumer_config import ConsumerConfig
from streaming.fetch_stage import Entry
from streaming.metrics import StreamMetrics
from streaming.score_stage import model_inputs
from streaming.scoring import (
    BatchRejected,
    Scored,
    Scorer,
    ScoringUnavailable,
    ThresholdStore,
    model_client,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowBatch:
    """One decided batch and what the canary made of it (``canary`` None: it failed)."""

    transaction_ids: list[str]
    event_times: list[int]  # epoch seconds of each transaction
    stable: Scored
    canary_version: int
    canary: Scored | None
    error: str = ""
    partitions: list[int] = field(default_factory=list)  # of each transaction (empty: one)

    def event_time(self) -> int | None:
        """How far event time has surely got in this batch: the earliest of its partitions'
        latest transactions (partitions of a backlog are read unevenly, one far ahead)."""
        latest: dict[int, int] = {}
        for partition, t in zip(
            self.partitions or [0] * len(self.event_times), self.event_times, strict=True
        ):
            if t > latest.get(partition, t - 1):
                latest[partition] = t
        return min(latest.values(), default=None)

    def stable_alerts(self) -> list[bool]:
        decide = self.stable.thresholds.decide
        return [decide(s) != c.APPROVE for s in self.stable.scores]

    def canary_alerts(self) -> list[bool]:
        assert self.canary is not None
        decide = self.canary.thresholds.decide
        return [decide(s) != c.APPROVE for s in self.canary.scores]


class ShadowObserver(Protocol):
    """Judges the canary from shadow batches; returns drift-events messages as (key, value)."""

    def observe(self, batch: ShadowBatch) -> list[tuple[str, dict[str, Any]]]: ...

    def tick(self, canary_version: int | None) -> list[tuple[str, dict[str, Any]]]: ...

    def add_labels(self, labels: Sequence[Any]) -> None: ...


def build_canary_client(
    serving_url: str, model_name: str, timeout_s: float = 1.0, protocol: str = "rest"
) -> Any:
    """A client pinned to the canary label that fails fast: one attempt, its own breaker."""
    return model_client(
        protocol,
        serving_url,
        model_name,
        label=CANARY,
        timeout_s=timeout_s,
        max_retries=0,
        breaker_failures=3,
        breaker_reset_s=5.0,
        output_key=c.SCORE_OUTPUT,
    )


@dataclass
class _Job:
    entries: list[Entry]
    features: list[dict[str, float]]
    stable: Scored


class ShadowScorer:
    """The shadow worker: ``start``, ``submit`` decided batches, ``close``.

    ``client`` is a canary-pinned ``ModelClient`` (``build_canary_client``), ``thresholds`` the
    models volume's metadata (the canary decides with its own thresholds). ``start`` takes the
    consumer's (thread-safe) Kafka producer.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        client: Any,
        thresholds: ThresholdStore,
        metrics: StreamMetrics,
        observer: ShadowObserver | None = None,
        *,
        max_queued: int = 2,
        absent_recheck_s: float = 2.0,
        tick_s: float = 1.0,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"shadow scoring: max queued batches must be >= 1, got {max_queued}")
        self.config = config
        self.client = client
        self.scorer = Scorer(client, thresholds, check_dtypes=False)
        self.metrics = metrics
        self.producer: Any = None
        self.observer = observer
        self.absent_recheck_s = absent_recheck_s
        self.tick_s = tick_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._absent_until = float("-inf")
        self._canary: int | None = None  # the canary version last seen
        self.send_failures = 0

    def start(self, producer: Any) -> None:
        self.producer = producer
        self._thread = threading.Thread(target=self._run, name="shadow-scoring", daemon=True)
        self._thread.start()

    def submit(
        self, entries: list[Entry], features: list[dict[str, float]], stable: Scored
    ) -> None:
        """Hand a decided batch to the worker, or count it skipped when the worker is busy."""
        if not entries or time.monotonic() < self._absent_until:
            return
        try:
            self._queue.put_nowait(_Job(entries, features, stable))
        except queue.Full:
            self.metrics.shadow_batches.labels("skipped").inc()

    def add_labels(self, labels: Sequence[Any]) -> None:
        """Labels read by the consumer (``messages.Label``), for the observer's paired
        comparison; called on the consumer's thread."""
        if self.observer is not None:
            self.observer.add_labels(labels)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread is None:
            return
        while True:  # make room for the stop sentinel: queued shadows are not decisions
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout_s)
        self._thread = None

    # -- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.tick_s)
            except queue.Empty:
                self._guarded(self._tick)
                continue
            if job is None:
                return
            self._guarded(self._shadow, job)

    def _guarded(self, step: Any, *args: Any) -> None:
        # The worker must outlive any one batch: a failure here costs that shadow, nothing else.
        try:
            step(*args)
        except Exception:
            log.exception("shadow scoring step failed")

    def _tick(self) -> None:
        if self.observer is None:
            return
        version = self._canary_version()
        self._publish(self.observer.tick(version))

    def _canary_version(self) -> int | None:
        """The canary version, None when the server labels none (or cannot say right now)."""
        from serving.client import ServingClientError, ServingHTTPError

        if time.monotonic() < self._absent_until:
            return None
        try:
            version = int(self.client.current_version())
        except ServingHTTPError as err:
            if not 400 <= err.status_code < 500:
                raise
            self._absent_until = time.monotonic() + self.absent_recheck_s
            self._set_canary(None)
            return None
        except ServingClientError as err:
            log.debug("canary label unresolved: %s", err)
            return self._canary
        self._set_canary(version)
        return version

    def _set_canary(self, version: int | None) -> None:
        if version != self._canary:
            log.info("shadow scoring %s", f"with canary version {version}" if version else "off")
        self._canary = version
        self.metrics.shadow_canary_version.set(version or 0)

    def _shadow(self, job: _Job) -> None:
        version = self._canary_version()
        if version is None:
            return
        entries = job.entries
        ids = [e.row[c.TRANSACTION_ID] for e in entries]  # type: ignore[index]
        times = [e.epoch for e in entries]
        partitions = [e.partition for e in entries]
        try:
            canary = self.scorer.score(model_inputs(entries, job.features), len(entries))
        except (ScoringUnavailable, BatchRejected) as err:
            self.metrics.shadow_batches.labels("error").inc()
            log.warning("canary version %d failed a shadow batch: %s", version, err)
            batch = ShadowBatch(ids, times, job.stable, version, None, str(err), partitions)
        else:
            self.metrics.shadow_batches.labels("scored").inc()
            self.metrics.shadow_transactions.inc(len(entries))
            self.metrics.shadow_latency.observe(canary.latency_s)
            self.metrics.shadow_score.observe_many(canary.scores)
            batch = ShadowBatch(ids, times, job.stable, canary.version, canary, "", partitions)
            self._record(batch)
        if self.observer is not None:
            self._publish(self.observer.observe(batch))

    def _record(self, batch: ShadowBatch) -> None:
        assert batch.canary is not None
        f = m.ShadowFields
        stable_th, canary_th = batch.stable.thresholds, batch.canary.thresholds
        stable_decisions = [stable_th.decide(s) for s in batch.stable.scores]
        canary_decisions = [canary_th.decide(s) for s in batch.canary.scores]
        differ = sum(a != b for a, b in zip(stable_decisions, canary_decisions, strict=True))
        self.metrics.shadow_disagreements.inc(differ)
        payload = {
            f.STABLE_VERSION: batch.stable.version,
            f.CANARY_VERSION: batch.canary.version,
            f.TRANSACTION_IDS: batch.transaction_ids,
            f.STABLE_SCORES: batch.stable.scores,
            f.CANARY_SCORES: batch.canary.scores,
            f.STABLE_DECISIONS: stable_decisions,
            f.CANARY_DECISIONS: canary_decisions,
            f.CANARY_MS: round(batch.canary.latency_s * 1000, 3),
            f.SHADOWED_AT: m.now_iso(),
        }
        key = str(batch.canary.version).encode()
        self._send(self.config.topics.shadow_scores, key, payload)

    def _publish(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for key, message in events:
            self._send(self.config.topics.drift_events, key.encode(), message)

    def _send(self, topic: str, key: bytes, payload: dict[str, Any]) -> None:
        try:
            future = self.producer.send(topic, key=key, value=m.encode(payload))
        except Exception as err:
            self._send_failed(topic, err)
            return
        future.add_errback(lambda err: self._send_failed(topic, err))

    def _send_failed(self, topic: str, err: Any) -> None:
        self.send_failures += 1
        log.error("shadow record to %s not sent: %s", topic, err)
