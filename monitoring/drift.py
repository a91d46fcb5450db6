"""Drift monitoring of the live stream against the served model's training statistics.

``DriftMonitor`` consumes what the scoring consumer already has after each batch (model inputs,
scores, decisions, event times) and compares windows of transactions with the reference the
training pipeline stored beside the model (``training_stats`` in
``assets.extra/fraud_metadata.json``, see ``components.push.pusher.training_profile``). The
checks, one module each under ``monitoring.checks``:

* ``distribution``: per numeric model input (``contract.MODEL_INPUTS`` minus the timestamp) and
  for the score, the PSI and Jensen-Shannon distance of the window's histogram over the
  training bins against the training proportions;
* ``night``: per numeric model input, the largest excess of a (day/night x bin) cell over the
  training days' share, in dispersion-widened standard deviations;
* ``alert_rate``: the share of review + block decisions against the rate the thresholds
  produced on the evaluation window (``expected_alert_rate``);
* ``labels``: live precision and recall of the alerts, as the delayed labels arrive
  (``add_labels``).

The monitor composes them: windows (``monitoring.drift_window``), the streak of drifting windows,
events and reports (``monitoring.drift_events``), metrics (``monitoring.metrics``) and the state
a restarted consumer resumes from. A window in which any check crosses its threshold is
*drifting*; ``sustained`` is True once the last ``sustained_windows`` closed windows all
drifted, which is the retraining policy's signal.

Not thread-safe: call ``update``/``add_labels`` from the consumer's loop thread (scraping the
metrics from the HTTP thread is safe, prometheus_client locks its values).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.metadata import ALERT_PRECISION, ModelMetadata
from monitoring.checks.distribution import js_distance, psi
from monitoring.checks.labels import LiveLabels
from monitoring.checks.night import NightExcess, night_excess
from monitoring.drift_batch import read_batch
from monitoring.drift_config import DriftConfig
from monitoring.drift_events import (
    ALERT_RATE_DRIFT,
    EVENT_KINDS,
    FEATURE_DRIFT,
    NIGHT_EXCESS,
    SCORE_DRIFT,
    SCORE_FEATURE,
    DriftEvent,
    WindowReport,
    iso_utc,
)
from monitoring.drift_window import HopWindows, Window, reference_window
from monitoring.metrics import DriftMetrics, RetrainMetrics

__all__ = [
    "ALERT_RATE_DRIFT",
    "EVENT_KINDS",
    "FEATURE_DRIFT",
    "NIGHT_EXCESS",
    "SCORE_DRIFT",
    "SCORE_FEATURE",
    "DriftConfig",
    "DriftEvent",
    "DriftMetrics",
    "DriftMonitor",
    "NightExcess",
    "RetrainMetrics",
    "WindowReport",
    "js_distance",
    "night_excess",
    "psi",
]

log = logging.getLogger(__name__)


class DriftMonitor:
    """Windowed drift checks of one served model version.

    ``update()`` contract:

    * takes one batch, in any size: ``features`` is a mapping ``name -> sequence`` (columns, e.g.
      the model inputs sent to :predict) or a sequence of per-row mappings; it must hold every
      monitored input (extra keys are ignored); ``scores`` the model's probabilities;
      ``decisions`` the decisions made (default: derived from the scores and the model's
      thresholds); ``event_times`` epoch seconds, ISO strings or datetimes (default: the
      ``contract.TIMESTAMP`` column of ``features`` when present); ``transaction_ids`` enable
      the label join of ``add_labels``;
    * count windows (default): splits the batch at window boundaries, so windows hold exactly
      ``window_size`` transactions in arrival order whatever the batch sizes;
    * event-time windows (``window_seconds``/``hop_seconds``): needs event times; a window
      ending with hop h is evaluated when the first row of a later hop arrives, over the rows
      of hops (h - window/hop, h]; a row later than its hop's window still counts in the
      windows that follow; windows that reach back before the first row seen (since the start
      or a model switch), and windows under ``min_samples`` rows, are skipped;
    * returns the events of every window that closed during the call (possibly several, usually
      none), in window order. ``last_report`` and ``reports`` keep what each window measured.
    """

    def __init__(
        self,
        metadata: ModelMetadata,
        config: DriftConfig | None = None,
        metrics: DriftMetrics | None = None,
    ) -> None:
        self.config = config or DriftConfig()
        self.metrics = metrics or DriftMetrics()
        self.window_index = 0  # index of the window being filled
        self.consecutive = 0
        self.reports: deque[WindowReport] = deque(maxlen=1_000)
        self._retrain_due = False
        self.labels = LiveLabels(self.config.max_pending_labels, self.config.label_window)
        self._logged_signature = ""
        self._set_reference(metadata)
        self._reset_window()

    @classmethod
    def from_model_dir(
        cls,
        path: str | Path,
        config: DriftConfig | None = None,
        metrics: DriftMetrics | None = None,
    ) -> DriftMonitor:
        """From a version directory, or the latest version under a base path."""
        from core.model import resolve_model_dir

        return cls(ModelMetadata.read(resolve_model_dir(path)), config, metrics)

    # -- reference -------------------------------------------------------------------------------
    def _set_reference(self, metadata: ModelMetadata) -> None:
        # Everything is parsed before anything is assigned: a bad new reference leaves the
        # monitor on the old one.
        template = reference_window(metadata, self.config)
        created = _created_timestamp(metadata)
        self.model_name: str | None = metadata.model_name
        self.model_version: int | None = metadata.version
        self.review_threshold = metadata.thresholds.review
        self.block_threshold = metadata.thresholds.block
        self.expected_alert_rate = template.alerts.expected_alert_rate
        self.expected_block_rate = template.alerts.expected_block_rate
        self.feature_names: tuple[str, ...] = tuple(template.inputs.profiles)
        self._template = template
        self.metrics.expected_alert_rate.set(self.expected_alert_rate)
        self.metrics.expected_precision.set(float(metadata.metrics.get(ALERT_PRECISION, math.nan)))
        self.metrics.model_created.set(created)
        if self.model_version is not None:
            self.metrics.model_version.set(self.model_version)

    def switch_model(self, metadata: ModelMetadata) -> None:
        """A new version answers now: compare with its training statistics from here on.

        The partial window is dropped (its rows were scored by the old model and binned against
        the old reference) and the drifting streak restarts; window numbering, pending decisions
        and live precision/recall continue (labels judge the decisions that were made).
        """
        self._set_reference(metadata)
        self._reset_window()
        self.consecutive = 0
        self._retrain_due = False
        # Drift against the new reference is news even when it looks like the old one's.
        self._logged_signature = ""
        self.metrics.consecutive_windows.set(0)
        self.metrics.sustained.set(0)

    def _reset_window(self) -> None:
        self._acc = self._template.empty()
        self._hops = self._new_hops()

    def _new_hops(self) -> HopWindows | None:
        """Timed mode: the hops of event time and what arrived in each; None in count mode."""
        cfg = self.config
        if cfg.window_seconds is None or cfg.hop_seconds is None:
            return None
        hops_per_window = round(cfg.window_seconds / cfg.hop_seconds)
        return HopWindows(cfg.hop_seconds, hops_per_window, self._template)

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a restarted consumer needs to carry on (windows, streak, label join) against
        the same model version, as JSON-ready data (lists, string-keyed dicts, numbers, with
        non-finite floats as strings); ``restore_state`` takes it back."""
        labels, hops = self.labels, self._hops
        return {
            "model_version": self.model_version,
            "timed": self.config.timed,
            "window_index": self.window_index,
            "consecutive": self.consecutive,
            "_tp": labels.tp,
            "_alerted": labels.alerted,
            "_frauds": labels.frauds,
            "unmatched_labels": labels.unmatched,
            "_open_hop": None if hops is None else hops.open_hop,
            "_first_hop": None if hops is None else hops.first_hop,
            "_pending": dict(labels.pending),  # JSON objects keep their order
            "_matched": [list(pair) for pair in labels.matched],
            "_acc": self._acc.state(),
            "_buckets": [] if hops is None else hops.state(),
        }

    def restore_state(self, state: Mapping[str, Any]) -> bool:
        """Take over a saved state; False (nothing changed) when it was saved against another
        model version or window kind, whose windows mean something else. A state that does not
        fit this reference (other inputs or bins) raises ValueError, changing nothing."""
        if state.get("model_version") != self.model_version or state.get("timed") != (
            self.config.timed
        ):
            return False
        cfg = self.config
        counts = (state["_tp"], state["_alerted"], state["_frauds"], state["unmatched_labels"])
        labels = LiveLabels.restored(
            cfg.max_pending_labels, cfg.label_window, state["_pending"], state["_matched"], counts
        )
        window_index, consecutive = state["window_index"], state["consecutive"]
        acc = self._template.restored(state["_acc"])
        hops = self._new_hops()
        buckets, open_hop, first_hop = state["_buckets"], state["_open_hop"], state["_first_hop"]
        if hops is not None:
            hops.restore(buckets, open_hop, first_hop)
        self.window_index, self.consecutive = window_index, consecutive
        self.labels, self._acc, self._hops = labels, acc, hops
        self.metrics.consecutive_windows.set(self.consecutive)
        self.metrics.sustained.set(1 if self.sustained else 0)
        return True

    @property
    def sustained(self) -> bool:
        """True after ``sustained_windows`` consecutive drifting windows (until one is clean)."""
        return self.consecutive >= self.config.sustained_windows

    @property
    def retrain_due(self) -> bool:
        """True right after the window that made the streak N, 2N, 3N... windows long: the
        moments to ask for a retrain (the trigger's single flight and cooldown do the rest)."""
        return self._retrain_due

    @property
    def last_report(self) -> WindowReport | None:
        return self.reports[-1] if self.reports else None

    @property
    def window_fill(self) -> int:
        """Transactions in the window being filled."""
        return self._acc.n if self._hops is None else self._hops.window().n

    # -- input -----------------------------------------------------------------------------------
    def update(
        self,
        features: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        scores: Any,
        decisions: Sequence[str] | None = None,
        event_times: Any = None,
        transaction_ids: Sequence[str] | None = None,
    ) -> list[DriftEvent]:
        """Add one batch; returns the events of the windows it closed (see the class doc)."""
        thresholds = (self.review_threshold, self.block_threshold)
        batch = read_batch(
            features, scores, decisions, event_times, self.feature_names, SCORE_FEATURE, thresholds
        )
        n = len(batch.alerted)
        if transaction_ids is not None:
            if len(transaction_ids) != n:
                raise ValueError(f"drift update: {len(transaction_ids)} ids for {n} scores")
            self.labels.update(transaction_ids, batch.alerted)
        self._retrain_due = False
        if self._hops is not None:
            if batch.times is None:
                raise ValueError("drift update: event-time windows need event_times")
            # Fewer rows than min_samples: too few to compare (a quiet period).
            full = [w for w in self._hops.add(batch) if w.n >= self.config.min_samples]
            return [event for window in full for event in self._close(window)]
        events: list[DriftEvent] = []
        size, lo = self.config.window_size, 0
        while lo < n:
            hi = lo + min(n - lo, size - self._acc.n)
            self._acc.update(batch, slice(lo, hi))
            lo = hi
            if self._acc.n >= size:
                events.extend(self._close(self._acc))
                self._acc = self._template.empty()
        return events

    def flush(self) -> list[DriftEvent]:
        """Close the partial window now (shutdown, a long pause): evaluated when it holds at
        least ``min_samples`` transactions, otherwise dropped."""
        self._retrain_due = False
        window = self._acc if self._hops is None else self._hops.window()
        events: list[DriftEvent] = []
        if window.n >= self.config.min_samples:
            events = self._close(window)
        elif window.n:
            log.info(
                "drift: dropping a partial window of %d transactions (< min_samples)", window.n
            )
        self._reset_window()
        return events

    # -- window evaluation -----------------------------------------------------------------------
    def _close(self, window: Window) -> list[DriftEvent]:
        verdict = window.verdict()
        drifting = bool(verdict.crossed)
        self.consecutive = self.consecutive + 1 if drifting else 0
        sustained = self.sustained
        # Sticky within one update() call, which may close several windows.
        self._retrain_due |= sustained and self.consecutive % self.config.sustained_windows == 0
        t0 = None if math.isinf(window.t_min) else window.t_min
        t1 = None if math.isinf(window.t_max) else window.t_max
        detected_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events = [
            DriftEvent(
                kind=crossed.kind,
                window=self.window_index,
                window_start=t0,
                window_end=t1,
                transactions=window.n,
                features=crossed.features,
                values=crossed.values,
                thresholds=crossed.thresholds,
                consecutive_windows=self.consecutive,
                sustained=sustained,
                model_name=self.model_name,
                model_version=self.model_version,
                detected_at=detected_at,
            )
            for crossed in verdict.crossed
        ]
        inputs, score, night, alerts = verdict.inputs, verdict.score, verdict.night, verdict.alerts
        report = WindowReport(
            window=self.window_index,
            transactions=window.n,
            window_start=t0,
            window_end=t1,
            psi={**inputs.psi, **score.psi},
            js_distance={**inputs.js_distance, **score.js_distance},
            alert_rate=alerts.alert_rate,
            block_rate=alerts.block_rate,
            alert_ratio=alerts.ratio,
            missing={k: v for k, v in window.missing.items() if v},
            drifting=drifting,
            events=tuple(events),
            night_excess_z=night.z,
        )
        self.reports.append(report)
        self._export(report)
        self._log(report)
        self.window_index += 1
        return events

    def _log(self, report: WindowReport) -> None:
        # Hourly hops over a drifting stream close a drifting window every hop: the log says
        # when drift starts, changes what it involves, or ends; repeats go to DEBUG (every
        # event is still on the drift-events topic and in the metrics).
        events = report.events
        signature = "; ".join(f"{e.kind} {', '.join(e.features) or ''}".strip() for e in events)
        t0, t1 = iso_utc(report.window_start), iso_utc(report.window_end)
        if events:
            log.log(
                logging.DEBUG if signature == self._logged_signature else logging.WARNING,
                "drift in window %d (%s .. %s, %d transactions): %s; %d drifting window(s) in "
                "a row%s",
                report.window,
                t0,
                t1,
                report.transactions,
                signature,
                self.consecutive,
                " (sustained)" if self.sustained else "",
            )
        elif self._logged_signature:
            log.info("drift ended in window %d (%s .. %s)", report.window, t0, t1)
        self._logged_signature = signature

    def _export(self, report: WindowReport) -> None:
        m = self.metrics
        for name, value in report.psi.items():
            m.psi.labels(name).set(value)
            m.js_distance.labels(name).set(report.js_distance[name])
        for name, z in report.night_excess_z.items():
            m.night_excess_z.labels(name).set(z)
        m.alert_rate.set(report.alert_rate)
        m.windows.inc()
        for e in report.events:
            m.events.labels(e.kind).inc()
        m.consecutive_windows.set(self.consecutive)
        m.sustained.set(1 if self.sustained else 0)

    # -- labels ----------------------------------------------------------------------------------
    def add_labels(self, labels: Iterable[Any] | Mapping[str, int]) -> int:
        """Join delayed labels to the decisions seen; returns how many matched.

        ``labels``: a mapping ``transaction_id -> is_fraud``, ``(transaction_id, is_fraud)``
        pairs, or objects with ``transaction_id`` and ``is_fraud`` attributes (the consumer's
        ``messages.Label``). Each decision is judged once: a repeated label (the labels topic is
        re-read after a rebalance) or one for a transaction this monitor never saw, or evicted,
        is counted in ``unmatched_labels`` and otherwise ignored.
        """
        matched = self.labels.add_labels(labels)
        if matched:
            self.metrics.labels_matched.inc(matched)
            self.metrics.live_precision.set(self.live_precision)
            self.metrics.live_recall.set(self.live_recall)
        return matched

    @property
    def live_precision(self) -> float:
        """Frauds among the labelled alerts of the recent label window (NaN: no alert yet)."""
        return self.labels.precision

    @property
    def live_recall(self) -> float:
        """Alerted share of the labelled frauds of the recent label window (NaN: no fraud yet)."""
        return self.labels.recall

    @property
    def unmatched_labels(self) -> int:
        """Labels that found no decision to judge (repeated, never seen, or evicted)."""
        return self.labels.unmatched

    @property
    def pending_labels(self) -> int:
        return len(self.labels.pending)


def _created_timestamp(metadata: ModelMetadata) -> float:
    """``created_at`` as Unix time (NaN when the metadata does not say)."""
    if metadata.created_at is None:
        return math.nan
    try:
        created = datetime.fromisoformat(metadata.created_at)
    except ValueError as err:
        raise ValueError(
            f"model {metadata.model_name} version {metadata.version}: created_at "
            f"{metadata.created_at!r} is no ISO 8601 time"
        ) from err
    # The pipeline writes UTC; a time without an offset is read as UTC too.
    return (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
