"""Prometheus metrics of the scoring consumer. Names are a contract with the Grafana dashboard:
add new ones freely, but do not rename or change the labels of existing ones.

Every metric lives in a ``StreamMetrics`` object with its own registry (nothing is registered at
import time), served by ``serve()`` on ``--metrics-port``.
"""

from __future__ import annotations

from typing import Any

PREFIX = "fraud_stream_"

# Counters (exposed with a _total suffix).
CONSUMED = PREFIX + "consumed"
DECIDED = PREFIX + "decided"
DECISIONS = PREFIX + "decisions"  # label: decision
DEAD_LETTERED = PREFIX + "dead_lettered"  # label: reason_kind
LABELS_CONSUMED = PREFIX + "labels_consumed"
LABELS_REJECTED = PREFIX + "labels_rejected"
REPLAYED_FOR_STATE = PREFIX + "replayed_for_state"
SCORING_FAILURES = PREFIX + "scoring_failures"
HOLD_BOUND_EXCEEDED = PREFIX + "hold_bound_exceeded"
NONFINITE_SCORES = PREFIX + "nonfinite_scores"
REPEATS_SKIPPED = PREFIX + "repeats_skipped"
FALLBACK_DECISIONS = PREFIX + "fallback_decisions"
CORRECTIONS = PREFIX + "corrections"
COMMITS = PREFIX + "commits"
COMMIT_FAILURES = PREFIX + "commit_failures"
SNAPSHOTS = PREFIX + "snapshots"
REBALANCES = PREFIX + "rebalances"
LABELS_DROPPED = PREFIX + "labels_dropped"
# Histograms.
END_TO_END_LATENCY = PREFIX + "end_to_end_latency_seconds"
SCORING_LATENCY = PREFIX + "scoring_latency_seconds"
BATCH_SIZE = PREFIX + "batch_size"
BATCH_DURATION = PREFIX + "batch_duration_seconds"
SCORE = PREFIX + "score"
SNAPSHOT_DURATION = PREFIX + "snapshot_duration_seconds"
# Gauges.
MODEL_VERSION = PREFIX + "serving_model_version"  # label: model_name
CONSUMER_LAG = PREFIX + "consumer_lag"  # labels: topic, partition
HELD_SECONDS = PREFIX + "scoring_held_seconds"
ASSIGNED_PARTITIONS = PREFIX + "assigned_partitions"
SNAPSHOT_BYTES = PREFIX + "snapshot_bytes"
LAST_COMMIT_TIMESTAMP = PREFIX + "last_commit_timestamp_seconds"
FALLBACK_BACKLOG = PREFIX + "fallback_backlog"
# Shadow scoring with the canary (streaming.shadow).
SHADOW_BATCHES = PREFIX + "shadow_batches"  # counter, label: outcome (SHADOW_OUTCOMES)
SHADOW_TRANSACTIONS = PREFIX + "shadow_transactions"  # counter: scored by the canary
SHADOW_DISAGREEMENTS = PREFIX + "shadow_disagreements"  # counter: canary decided otherwise
SHADOW_LATENCY = PREFIX + "shadow_latency_seconds"
SHADOW_SCORE = PREFIX + "shadow_score"
SHADOW_CANARY_VERSION = PREFIX + "shadow_canary_version"  # 0: no canary
SHADOW_OUTCOMES = ("scored", "error", "skipped")

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000)
SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class BatchHistogram:
    """A Prometheus histogram fed a whole batch at a time.

    The consumer observes two values per transaction (score, end-to-end latency); with
    prometheus_client's ``Histogram`` that is a lock and a bucket loop per value, several
    percent of the consumer's time. Here a batch is one ``numpy.searchsorted``; the exposition
    is the same (``_bucket``/``_sum``/``_count``).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: Any):
        import threading

        import numpy as np

        self._np = np
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Any) -> None:
        np = self._np
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if not len(arr):
            return
        # le buckets: a value equal to a bound belongs to it (side="left").
        idx = np.searchsorted(self.bounds, arr, side="left")
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(arr.sum())

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def collect(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        with self._lock:
            cumulative = self._np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(repr(float(b)), c) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)

    def describe(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        yield HistogramMetricFamily(self.name, self.documentation)


class StreamMetrics:
    """The consumer's instruments; one instance per consumer (tests run several per process)."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(CONSUMED, "Messages read from the transactions topic", registry=r)
        self.decided = Counter(DECIDED, "Transactions scored and decided", registry=r)
        self.decisions = Counter(
            DECISIONS, "Decisions produced, by decision", ["decision"], registry=r
        )
        self.dead_lettered = Counter(
            DEAD_LETTERED,
            "Transactions sent to the dead-letter topic, by reason kind",
            ["reason_kind"],
            registry=r,
        )
        # Every reason kind at 0 from the start: the dead-letter rate alert's increase() would
        # miss the first dead letter of a series that appears at 1.
        from streaming.messages import REASON_KINDS

        for kind in REASON_KINDS:
            self.dead_lettered.labels(kind)
        self.labels_consumed = Counter(LABELS_CONSUMED, "Labels read", registry=r)
        self.labels_rejected = Counter(LABELS_REJECTED, "Unreadable labels skipped", registry=r)
        self.replayed_for_state = Counter(
            REPLAYED_FOR_STATE,
            "Already-decided transactions re-read only to rebuild feature state after a restart",
            registry=r,
        )
        self.scoring_failures = Counter(
            SCORING_FAILURES, "Failed scoring attempts (the batch is held and retried)", registry=r
        )
        self.hold_bound_exceeded = Counter(
            HOLD_BOUND_EXCEEDED,
            "Batches held longer than the lag bound because the model server was unavailable",
            registry=r,
        )
        self.nonfinite_scores = Counter(
            NONFINITE_SCORES,
            "Scores that were no finite number, decided with the fail-safe decision",
            registry=r,
        )
        self.repeats_skipped = Counter(
            REPEATS_SKIPPED,
            "Identical re-sends of a transaction id decided before, skipped",
            registry=r,
        )
        self.fallback_decisions = Counter(
            FALLBACK_DECISIONS,
            "Transactions decided with the fallback decision after the decision deadline",
            registry=r,
        )
        self.corrections = Counter(
            CORRECTIONS,
            "Re-scores of fallback decisions sent to the decisions topic as corrections",
            registry=r,
        )
        self.commits = Counter(COMMITS, "Offset commits", registry=r)
        self.commit_failures = Counter(
            COMMIT_FAILURES, "Offset commits rejected (rebalance)", registry=r
        )
        self.snapshots = Counter(SNAPSHOTS, "Partition feature snapshots written", registry=r)
        self.rebalances = Counter(REBALANCES, "Partition assignments received", registry=r)
        self.labels_dropped = Counter(
            LABELS_DROPPED,
            "Labels refused by a partition whose pending labels were at their bound (its "
            "terminal features miss them)",
            registry=r,
        )
        self.end_to_end_latency = BatchHistogram(
            END_TO_END_LATENCY,
            "Transaction produced (Kafka timestamp) to its decision acknowledged by the broker",
            LATENCY_BUCKETS,
            r,
        )
        self.scoring_latency = Histogram(
            SCORING_LATENCY,
            "One batched :predict call, as seen by the consumer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            BATCH_SIZE, "Transactions per poll batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_duration = Histogram(
            BATCH_DURATION,
            "Poll batch processing time, parse to commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score = BatchHistogram(SCORE, "Fraud probabilities", SCORE_BUCKETS, r)
        self.snapshot_duration = Histogram(
            SNAPSHOT_DURATION,
            "Writing all owned partitions' snapshots",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            MODEL_VERSION, "Version of the model that answered last", ["model_name"], registry=r
        )
        self.consumer_lag = Gauge(
            CONSUMER_LAG,
            "High watermark minus position, per owned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.held_seconds = Gauge(
            HELD_SECONDS, "How long the current batch has waited for the model server", registry=r
        )
        self.assigned_partitions = Gauge(
            ASSIGNED_PARTITIONS, "Transactions partitions owned by this consumer", registry=r
        )
        self.snapshot_bytes = Gauge(
            SNAPSHOT_BYTES, "Size of the last snapshot of all owned partitions", registry=r
        )
        self.last_commit_timestamp = Gauge(
            LAST_COMMIT_TIMESTAMP, "Unix time of the last successful commit", registry=r
        )
        self.fallback_backlog = Gauge(
            FALLBACK_BACKLOG, "Fallback-decided transactions awaiting their re-score", registry=r
        )
        self.shadow_batches = Counter(
            SHADOW_BATCHES,
            "Decided batches given to the canary: scored, error (the canary failed or timed "
            "out), skipped (the shadow worker was still busy)",
            ["outcome"],
            registry=r,
        )
        self.shadow_transactions = Counter(
            SHADOW_TRANSACTIONS, "Transactions shadow-scored by the canary", registry=r
        )
        self.shadow_disagreements = Counter(
            SHADOW_DISAGREEMENTS,
            "Shadow-scored transactions the canary would have decided otherwise",
            registry=r,
        )
        self.shadow_latency = Histogram(
            SHADOW_LATENCY,
            "One shadow :predict call on the canary",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_score = BatchHistogram(
            SHADOW_SCORE, "Fraud probabilities of the canary (never acted on)", SCORE_BUCKETS, r
        )
        self.shadow_canary_version = Gauge(
            SHADOW_CANARY_VERSION, "Version labelled canary (0: none)", registry=r
        )

    def serve(
        self, port: int, addr: str = "127.0.0.1", health: Any = None, labels: Any = None
    ) -> Any:
        """Expose /metrics (and, with ``health``, /healthz and /ready; with ``labels``,
        POST /labels: see streaming.health) on ``addr:port`` in a daemon thread; returns the
        server (``shutdown()``). Loopback by default: exposing it is a deployment's decision."""
        from streaming.health import ConsumerHealth, serve

        return serve(self.registry, health or ConsumerHealth(), port, addr, labels)
