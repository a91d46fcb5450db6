"""Prometheus exporters of drift monitoring and retraining.

``DriftMetrics`` (``monitoring.drift.DriftMonitor``) and ``RetrainMetrics``
(``monitoring.retrain.RetrainTrigger``) each create their instruments in their own registry unless
one is given. The Grafana dashboard test maps the ``fraud_drift_`` and ``fraud_retrain_`` prefixes
to this module and discovers the ``*Metrics`` classes defined in it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

from monitoring.drift_events import EVENT_KINDS

# --- metric names (a contract with the Grafana dashboard: add, never rename) --------------------

DRIFT_PREFIX = "fraud_drift_"
PSI = DRIFT_PREFIX + "psi"  # label: feature
JS_DISTANCE = DRIFT_PREFIX + "js_distance"  # label: feature
NIGHT_EXCESS_Z = DRIFT_PREFIX + "night_excess_z"  # label: feature
ALERT_RATE = DRIFT_PREFIX + "alert_rate"
EXPECTED_ALERT_RATE = DRIFT_PREFIX + "expected_alert_rate"
LIVE_PRECISION = DRIFT_PREFIX + "live_precision"
LIVE_RECALL = DRIFT_PREFIX + "live_recall"
WINDOWS = DRIFT_PREFIX + "windows"  # counter: exposed as fraud_drift_windows_total
EVENTS = DRIFT_PREFIX + "events"  # counter, label: kind
SUSTAINED = DRIFT_PREFIX + "sustained"
CONSECUTIVE_WINDOWS = DRIFT_PREFIX + "consecutive_windows"
LABELS_MATCHED = DRIFT_PREFIX + "labels_matched"  # counter
MODEL_VERSION = DRIFT_PREFIX + "model_version"
EXPECTED_PRECISION = DRIFT_PREFIX + "expected_precision"
MODEL_CREATED = DRIFT_PREFIX + "model_created_timestamp_seconds"

RETRAIN_PREFIX = "fraud_retrain_"
RETRAIN_RUNS = RETRAIN_PREFIX + "runs"  # counter, label: outcome
RETRAIN_REFUSED = RETRAIN_PREFIX + "refused"  # counter, label: cause
RETRAIN_IN_PROGRESS = RETRAIN_PREFIX + "in_progress"
RETRAIN_LAST_DURATION = RETRAIN_PREFIX + "last_duration_seconds"
RETRAIN_LAST_PUSHED_VERSION = RETRAIN_PREFIX + "last_pushed_version"
RETRAIN_OUTCOMES: tuple[str, ...] = (
    "started",
    "pushed",
    "not_blessed",
    "failed",
    "submitted",
    "duplicate",
)

ROLLOUT_PREFIX = "fraud_rollout_"
ROLLOUT_STEPS = ROLLOUT_PREFIX + "steps"  # counter, label: step (monitoring.canary STEPS)
ROLLOUT_CANARY_VERSION = ROLLOUT_PREFIX + "canary_version"  # 0: no canary being judged
ROLLOUT_FIGURE = ROLLOUT_PREFIX + "figure"  # gauge, label: figure (PromotionPolicy.figures)
ROLLOUT_FIGURES: tuple[str, ...] = (
    "error_rate",
    "transactions",
    "stable_alert_rate",
    "canary_alert_rate",
    "score_psi",
    "labelled_frauds",
    "stable_recall",
    "canary_recall",
    "stable_precision",
    "canary_precision",
    "elapsed_s",
)


class DriftMetrics:
    """The drift monitor's instruments, in their own registry unless one is given (pass the
    consumer's ``StreamMetrics().registry`` to serve everything on one /metrics port)."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.psi = Gauge(
            PSI,
            "PSI of the last window vs training, per model input and score",
            ["feature"],
            registry=r,
        )
        self.js_distance = Gauge(
            JS_DISTANCE,
            "Jensen-Shannon distance (base 2) of the last window vs training",
            ["feature"],
            registry=r,
        )
        self.night_excess_z = Gauge(
            NIGHT_EXCESS_Z,
            "Largest excess of a (day/night x bin) cell of the last window over training, in "
            "dispersion-widened standard deviations, per model input",
            ["feature"],
            registry=r,
        )
        self.alert_rate = Gauge(
            ALERT_RATE, "Share of review + block decisions in the last window", registry=r
        )
        self.expected_alert_rate = Gauge(
            EXPECTED_ALERT_RATE,
            "Alert rate of the served model's thresholds on its evaluation window",
            registry=r,
        )
        self.live_precision = Gauge(
            LIVE_PRECISION, "Frauds among labelled alerts (recent labels; NaN = none)", registry=r
        )
        self.live_recall = Gauge(
            LIVE_RECALL, "Alerted share of labelled frauds (recent labels; NaN = none)", registry=r
        )
        self.windows = Counter(WINDOWS, "Drift windows closed and evaluated", registry=r)
        self.events = Counter(EVENTS, "Drift events, by kind", ["kind"], registry=r)
        self.sustained = Gauge(
            SUSTAINED, "1 while the last N windows all drifted (retraining signal)", registry=r
        )
        self.consecutive_windows = Gauge(
            CONSECUTIVE_WINDOWS, "Drifting windows in a row, up to the last one", registry=r
        )
        self.labels_matched = Counter(
            LABELS_MATCHED, "Labels joined to a decision this monitor saw", registry=r
        )
        self.model_version = Gauge(
            MODEL_VERSION, "Version whose training statistics are the reference", registry=r
        )
        self.expected_precision = Gauge(
            EXPECTED_PRECISION,
            "Precision of the reference model's alerts on its evaluation window (NaN = unknown)",
            registry=r,
        )
        self.model_created = Gauge(
            MODEL_CREATED,
            "Unix time the reference model was created (NaN = unknown)",
            registry=r,
        )
        for g in (
            self.live_precision,
            self.live_recall,
            self.expected_precision,
            self.model_created,
        ):
            g.set(math.nan)
        # Every kind exported from the start at 0: increase() over a series that appears at 1
        # misses that first event, and alert rules on it would not fire.
        for kind in EVENT_KINDS:
            self.events.labels(kind)

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


class RetrainMetrics:
    """Instruments of ``monitoring.retrain.RetrainTrigger``."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            RETRAIN_RUNS,
            "Retraining runs by outcome (started, then how each ended)",
            ["outcome"],
            registry=r,
        )
        self.refused = Counter(
            RETRAIN_REFUSED,
            "Retraining triggers refused, by cause (in_progress, cooldown)",
            ["cause"],
            registry=r,
        )
        self.in_progress = Gauge(
            RETRAIN_IN_PROGRESS, "1 while a retraining run is going", registry=r
        )
        self.last_duration = Gauge(
            RETRAIN_LAST_DURATION, "Duration of the last finished retraining run", registry=r
        )
        self.last_pushed_version = Gauge(
            RETRAIN_LAST_PUSHED_VERSION, "Model version the last pushing run created", registry=r
        )
        # At 0 from the start, so increase() sees the first failed run (see DriftMetrics.events).
        for outcome in RETRAIN_OUTCOMES:
            self.runs.labels(outcome)

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


# --- model quality from delayed labels (monitoring.quality) ------------------------------------

QUALITY_PREFIX = "fraud_quality_"
# Counters, labels: model_version, segment, band, decision, fraud ("1"/"0").
LABELLED = QUALITY_PREFIX + "labelled"
LABELLED_AMOUNT = QUALITY_PREFIX + "labelled_amount"
# Counter, labels: model_version, decision. Decisions whose label never came (censored).
UNLABELLED = QUALITY_PREFIX + "unlabelled"
# Gauges, label: model_version. Over the most recent labelled decisions of each version.
AVERAGE_PRECISION = QUALITY_PREFIX + "average_precision"
WINDOW_LABELS = QUALITY_PREFIX + "window_labels"
# The segment of every transaction: the whole stream.
ALL_SEGMENT = "all"
SEGMENT_LABELS = ("model_version", "segment", "band", "decision", "fraud")


class QualityMetrics:
    """Instruments of ``monitoring.quality.QualityMonitor``, in their own registry unless one is
    given. Series are per model version; ``forget_version`` drops a version's."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.labelled = Counter(
            LABELLED,
            "Decisions whose label arrived, by model version, segment band, decision and truth",
            SEGMENT_LABELS,
            registry=r,
        )
        self.labelled_amount = Counter(
            LABELLED_AMOUNT,
            "Amount of the labelled decisions (money blocked, reviewed, missed)",
            SEGMENT_LABELS,
            registry=r,
        )
        self.unlabelled = Counter(
            UNLABELLED,
            "Decisions still without a label past the label delay (censored), by decision",
            ["model_version", "decision"],
            registry=r,
        )
        self.average_precision = Gauge(
            AVERAGE_PRECISION,
            "Average precision of the scores over the version's recent labelled decisions",
            ["model_version"],
            registry=r,
        )
        self.window_labels = Gauge(
            WINDOW_LABELS,
            "Labelled decisions in the average-precision window",
            ["model_version"],
            registry=r,
        )

    def forget_version(self, version: str, keys: Iterable[tuple[str, ...]]) -> None:
        """Remove the series of ``version``: ``keys`` are the (segment, band, decision, fraud)
        values it was exported with (bounded cardinality: old versions go)."""
        keys = list(keys)
        for segment, band, decision, fraud in keys:
            for metric in (self.labelled, self.labelled_amount):
                with contextlib.suppress(KeyError):
                    metric.remove(version, segment, band, decision, fraud)
        for decision in {key[2] for key in keys}:
            with contextlib.suppress(KeyError):
                self.unlabelled.remove(version, decision)
        for gauge in (self.average_precision, self.window_labels):
            with contextlib.suppress(KeyError):
                gauge.remove(version)

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


class RolloutMetrics:
    """Instruments of ``monitoring.canary.CanaryController``: its steps and the figures the
    promotion rule (monitoring.promotion) judges the current canary by."""

    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.steps = Counter(
            ROLLOUT_STEPS,
            "Rollout steps: shadow_started, promote/rollback verdicts, promoted, rolled_back, "
            "apply_failed, canary_gone",
            ["step"],
            registry=r,
        )
        self.canary_version = Gauge(
            ROLLOUT_CANARY_VERSION, "Canary version being judged (0: none)", registry=r
        )
        self.figure = Gauge(
            ROLLOUT_FIGURE,
            "What the promotion rule judges the canary by (NaN: nothing to measure yet)",
            ["figure"],
            registry=r,
        )

    def show(self, figures: Any) -> None:
        for name in ROLLOUT_FIGURES:
            value = figures.get(name)
            self.figure.labels(name).set(math.nan if value is None else float(value))
