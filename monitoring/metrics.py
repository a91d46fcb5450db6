"""Prometheus exporters of drift monitoring and retraining.

``DriftMetrics`` (``monitoring.drift.DriftMonitor``) and ``RetrainMetrics``
(``monitoring.retrain.RetrainTrigger``) each create their instruments in their own registry unless
one is given. The Grafana dashboard test maps the ``fraud_drift_`` and ``fraud_retrain_`` prefixes
to this module and discovers the ``*Metrics`` classes defined in it.
"""

from __future__ import annotations

import math
from typing import Any

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

RETRAIN_PREFIX = "fraud_retrain_"
RETRAIN_RUNS = RETRAIN_PREFIX + "runs"  # counter, label: outcome
RETRAIN_REFUSED = RETRAIN_PREFIX + "refused"  # counter, label: cause
RETRAIN_IN_PROGRESS = RETRAIN_PREFIX + "in_progress"
RETRAIN_LAST_DURATION = RETRAIN_PREFIX + "last_duration_seconds"
RETRAIN_LAST_PUSHED_VERSION = RETRAIN_PREFIX + "last_pushed_version"
RETRAIN_OUTCOMES: tuple[str, ...] = ("started", "pushed", "not_blessed", "failed", "submitted")

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
        for g in (self.live_precision, self.live_recall):
            g.set(math.nan)

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
            "Retraining runs by outcome (started, then pushed/not_blessed/failed/submitted)",
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
