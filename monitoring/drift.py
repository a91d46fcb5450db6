"""Drift monitoring of the live stream against the served model's training statistics.

``DriftMonitor`` consumes what the scoring consumer already has after each batch (model inputs,
scores, decisions, event times) and compares fixed-size windows of transactions with the
reference the training pipeline stored beside the model (``training_stats`` in
``assets.extra/fraud_metadata.json``, see ``components.push.pusher.training_profile``):

* per numeric model input (``contract.MODEL_INPUTS`` minus the timestamp) and for the score:
  the window's histogram over the *training* bin edges, then the population stability index
  (PSI) and the Jensen-Shannon distance (base 2, so it lies in [0, 1]) against the training
  proportions;
* per numeric model input, the *night excess*: the window's joint (day/night x bin) counts
  against the training proportions, each cell's excess over its expected count in standard
  deviations (Poisson, widened by the day-to-day dispersion measured on the training days). A
  new fraud pattern is a few dozen transactions a day concentrated in one region, such as the
  night hours at amounts in a customer's top bin: too few to move a 24 h histogram's PSI past
  the stationary noise, many deviations in the one cell they fill;
* the alert rate (share of review + block decisions) against the rate the thresholds produced on
  the evaluation window (``expected_alert_rate``);
* live precision and recall of the alerts, as the delayed labels arrive (``add_labels``).

A window in which any check crosses its threshold is *drifting*; ``sustained`` is True once the
last ``sustained_windows`` closed windows all drifted, which is the retraining policy's signal.

Every value is also a Prometheus metric (``DriftMetrics``). ``RetrainMetrics`` (used by
``monitoring.retrain``) lives here too: the Grafana dashboard test maps the ``fraud_drift_``
and ``fraud_retrain_`` prefixes to this module and discovers ``*Metrics`` classes defined in it.

Not thread-safe: call ``update``/``add_labels`` from the consumer's loop thread (scraping the
metrics from the HTTP thread is safe, prometheus_client locks its values).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core import contract as c
from core.metadata import ModelMetadata

log = logging.getLogger(__name__)

# The score distribution is monitored like a feature, under this name (a metric label value).
SCORE_FEATURE = "score"

# Event kinds (the ``kind`` of a DriftEvent and a metric label).
FEATURE_DRIFT = "feature_drift"
SCORE_DRIFT = "score_drift"
ALERT_RATE_DRIFT = "alert_rate"
NIGHT_EXCESS = "night_excess"
EVENT_KINDS: tuple[str, ...] = (FEATURE_DRIFT, SCORE_DRIFT, ALERT_RATE_DRIFT, NIGHT_EXCESS)

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
    """Instruments of ``monitoring.retrain.RetrainTrigger`` (defined here, see module doc)."""

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


# --- configuration and results ------------------------------------------------------------------


@dataclass(frozen=True)
class DriftConfig:
    # Transactions per window. 5,000 keeps the null PSI of a 10-bin profile near 0.002, two
    # orders of magnitude under the threshold, while reacting within minutes at production rates.
    window_size: int = 5_000
    psi_threshold: float = 0.2
    # Jensen-Shannon *distance* (sqrt of the base-2 divergence), in [0, 1].
    js_threshold: float = 0.1
    # Observed / expected alert rate outside [low, high] drifts.
    alert_rate_bounds: tuple[float, float] = (0.5, 2.0)
    # Consecutive drifting windows that make the drift "sustained".
    sustained_windows: int = 3
    # A window shorter than this (only ``flush()`` closes one early) is dropped, not evaluated:
    # a histogram of a few hundred rows is too noisy to compare.
    min_samples: int = 1_000
    # The alert-rate check needs this many expected alerts in the window to mean anything.
    min_expected_alerts: float = 10.0
    # Added to every bin's proportion (then renormalised) before PSI, so an empty bin on either
    # side gives a large but finite term.
    epsilon: float = 1e-4
    # Decisions remembered for the label join (oldest evicted first): size it to cover the label
    # delay at the stream's rate (7 days x rate), or late labels find nothing to join.
    max_pending_labels: int = 500_000
    # Live precision/recall are computed over the most recent matched labels.
    label_window: int = 10_000
    # Monitored inputs; None = every numeric model input of the contract.
    features: tuple[str, ...] | None = None
    # Event-time windows instead of count windows: every ``hop_seconds`` of event time, evaluate
    # the last ``window_seconds``. A window of whole days holds whole daily cycles wherever it
    # starts, so traffic's rhythm does not read as drift (a count window of about a day does:
    # it covers some hours twice), and the hop bounds the detection lag by the hop, not by
    # the window. ``window_size`` is then unused; ``min_samples`` still applies.
    window_seconds: float | None = None
    hop_seconds: float | None = None
    # Night excess: a (day/night x bin) cell more than this many standard deviations above its
    # expected count drifts (None turns the check off). On the demo's data the stationary
    # maximum over 55 days of hourly-hopped 24 h windows and every input was 6.7; the new
    # pattern's cell reaches 10 six hours after its first transaction.
    night_z_threshold: float | None = 8.0
    # Cells expected to hold fewer transactions are not tested (a count of 0-4 has no usable
    # normal approximation).
    night_min_expected: float = 5.0

    def __post_init__(self) -> None:
        low, high = self.alert_rate_bounds
        checks = (
            (self.window_size >= 1, f"window_size must be >= 1, got {self.window_size}"),
            (self.psi_threshold > 0, f"psi_threshold must be > 0, got {self.psi_threshold}"),
            (
                0 < self.js_threshold <= 1,
                f"js_threshold must be in (0, 1], got {self.js_threshold}",
            ),
            (0 <= low < high, f"alert_rate_bounds must satisfy 0 <= low < high, got {low}, {high}"),
            (self.sustained_windows >= 1, "sustained_windows must be >= 1"),
            (
                self.min_samples >= 1
                and (self.window_seconds is not None or self.min_samples <= self.window_size),
                f"min_samples must be in [1, window_size={self.window_size}], "
                f"got {self.min_samples}",
            ),
            (0 < self.epsilon < 0.01, f"epsilon must be in (0, 0.01), got {self.epsilon}"),
            (self.max_pending_labels >= 1, "max_pending_labels must be >= 1"),
            (
                self.night_z_threshold is None or self.night_z_threshold > 0,
                f"night_z_threshold must be > 0 or None, got {self.night_z_threshold}",
            ),
            (
                self.night_min_expected > 0,
                f"night_min_expected must be > 0, got {self.night_min_expected}",
            ),
            (self.label_window >= 1, "label_window must be >= 1"),
            (
                (self.window_seconds is None) == (self.hop_seconds is None),
                "window_seconds and hop_seconds go together",
            ),
            (
                self.window_seconds is None
                or (
                    self.hop_seconds is not None
                    and 0 < self.hop_seconds <= self.window_seconds
                    and math.isclose(
                        self.window_seconds / self.hop_seconds,
                        round(self.window_seconds / self.hop_seconds),
                    )
                ),
                f"window_seconds ({self.window_seconds}) must be a whole multiple of "
                f"hop_seconds ({self.hop_seconds}) > 0",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"drift config: {message}")

    @property
    def timed(self) -> bool:
        return self.window_seconds is not None

    @property
    def night_checked(self) -> bool:
        """The night excess compares a window's night share with the training days' share, so
        it needs windows of whole days: a count window, or an event-time window of 6 hours,
        holds whatever part of the daily cycle it happens to cover."""
        return (
            self.night_z_threshold is not None
            and self.window_seconds is not None
            and self.window_seconds % c.SECONDS_PER_DAY == 0
        )


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime(c.TIMESTAMP_FORMAT)


def _finite(value: float | bool | None) -> float | bool | None:
    """JSON has no NaN/inf: such values travel as null."""
    if isinstance(value, bool):
        return value
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class DriftEvent:
    """One crossed check of one window; ``to_message()`` is the drift-events topic value."""

    kind: str
    window: int
    window_start: float | None  # event time (epoch s) of the window's earliest transaction
    window_end: float | None  # ... and of its latest
    transactions: int
    features: tuple[str, ...]  # inputs involved (SCORE_FEATURE for score drift; () for alerts)
    values: dict[str, dict[str, float | None]]  # per feature {psi, js_distance}, or the rates
    thresholds: dict[str, Any]
    consecutive_windows: int
    sustained: bool
    model_name: str | None
    model_version: int | None
    detected_at: str

    def to_message(self) -> dict[str, Any]:
        return {
            "event": "drift",
            "kind": self.kind,
            "window": self.window,
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "transactions": self.transactions,
            "features": list(self.features),
            "values": {k: {n: _finite(v) for n, v in d.items()} for k, d in self.values.items()},
            "thresholds": self.thresholds,
            "consecutive_windows": self.consecutive_windows,
            "sustained": self.sustained,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "detected_at": self.detected_at,
        }


@dataclass(frozen=True)
class WindowReport:
    """Everything measured on one closed window (events or not)."""

    window: int
    transactions: int
    window_start: float | None
    window_end: float | None
    psi: dict[str, float]
    js_distance: dict[str, float]
    alert_rate: float
    block_rate: float
    alert_ratio: float | None  # observed / expected; None when nothing is expected
    missing: dict[str, int]  # non-finite values skipped, per feature
    drifting: bool
    events: tuple[DriftEvent, ...] = field(default=())
    # Largest cell excess per input (NaN: no cell expected enough rows); empty when the check
    # is off, the windows are not whole days, or the reference has no night profile.
    night_excess_z: dict[str, float] = field(default_factory=dict)


# --- the distances ------------------------------------------------------------------------------


def psi(actual: np.ndarray, expected: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population stability index of two distributions over the same bins.

    Both sides get ``epsilon`` added per bin and are renormalised, so an empty bin contributes a
    large finite term instead of infinity.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise ValueError(f"psi: need two 1-d arrays of equal length, got {a.shape}, {e.shape}")
    a = (a / a.sum() + epsilon) / (1 + epsilon * len(a))
    e = (e / e.sum() + epsilon) / (1 + epsilon * len(e))
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(actual: np.ndarray, expected: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2: sqrt of the JS divergence, in [0, 1]; needs no smoothing
    (0 log 0 = 0 and the mixture is positive wherever either side is)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise ValueError(f"js: need two 1-d arrays of equal length, got {a.shape}, {e.shape}")
    a, e = a / a.sum(), e / e.sum()
    m = (a + e) / 2

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))

    # Rounding can make the divergence a hair negative for identical inputs.
    return math.sqrt(max(0.0, (kl(a) + kl(e)) / 2))


# --- the monitor --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    inner: np.ndarray  # interior edges; bin = searchsorted(inner, v, side="right")
    proportions: np.ndarray


def _profile(name: str, raw: Any, where: str) -> _Profile:
    try:
        edges = np.asarray(raw["edges"], dtype=np.float64)
        props = np.asarray(raw["proportions"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: profile of {name!r} needs edges and proportions ({err!r})"
        ) from err
    if edges.ndim != 1 or len(edges) < 2 or len(props) != len(edges) - 1:
        raise ValueError(
            f"{where}: profile of {name!r} has {len(edges)} edges for {len(props)} proportions "
            "(need k + 1 edges for k bins)"
        )
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"{where}: edges of {name!r} are not strictly increasing")
    if not math.isclose(float(props.sum()), 1.0, abs_tol=1e-6) or np.any(props < 0):
        raise ValueError(f"{where}: proportions of {name!r} do not form a distribution")
    # The outer edges are +-1e300 (open-ended bins): binning uses the interior ones only,
    # exactly as feature_profile counted the training rows.
    return _Profile(edges[1:-1], props)


@dataclass(frozen=True)
class _NightProfile:
    proportions: np.ndarray  # 2K cells: daytime bins, then night-time bins
    dispersion: float


def _night_profile(name: str, raw: Any, bins: int, where: str) -> _NightProfile:
    try:
        props = np.asarray(raw["proportions"], dtype=np.float64)
        dispersion = float(raw["dispersion"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: night profile of {name!r} needs proportions and dispersion ({err!r})"
        ) from err
    if props.shape != (2 * bins,):
        raise ValueError(
            f"{where}: night profile of {name!r} has {props.size} cells for {bins} bins "
            f"(need {2 * bins}: day and night per bin)"
        )
    if not math.isclose(float(props.sum()), 1.0, abs_tol=1e-6) or np.any(props < 0):
        raise ValueError(f"{where}: night proportions of {name!r} do not form a distribution")
    if not dispersion >= 1.0:
        raise ValueError(f"{where}: night dispersion of {name!r} is {dispersion}, not >= 1")
    return _NightProfile(props, dispersion)


class NightExcess(NamedTuple):
    z: float  # NaN when no cell is expected to hold enough rows
    cell: int  # -1 then
    observed: float
    expected: float


def night_excess(
    day_and_night: np.ndarray, profile: _NightProfile, min_expected: float
) -> NightExcess:
    """Largest (observed - expected) / sqrt(dispersion * expected) over the cells expected to
    hold at least ``min_expected`` rows, with its cell and counts. Only excesses matter: a new
    pattern adds transactions to a region, and a deficit in one cell is the mirror of excesses
    elsewhere."""
    counts = np.asarray(day_and_night, dtype=np.float64)
    expected = counts.sum() * profile.proportions
    used = expected >= min_expected
    if not used.any():
        return NightExcess(math.nan, -1, math.nan, math.nan)
    z = np.full(len(counts), -np.inf)
    z[used] = (counts[used] - expected[used]) / np.sqrt(profile.dispersion * expected[used])
    cell = int(np.argmax(z))
    return NightExcess(float(z[cell]), cell, float(counts[cell]), float(expected[cell]))


def _column(values: Any, n: int | None, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and len(arr) != n:
        raise ValueError(f"drift update: {name!r} has {len(arr)} values, expected {n}")
    return arr


def _epoch_seconds(values: Any, n: int) -> np.ndarray:
    """Event times as epoch seconds from numbers, ISO-8601 strings or datetimes."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iuf":
        out = arr.astype(np.float64).reshape(-1)
    else:
        import pandas as pd

        flat = arr.reshape(-1)
        if arr.dtype.kind == "S":
            flat = np.char.decode(flat, "utf-8")
        # format="ISO8601" exists from pandas 2 on; 1.x parses mixed ISO forms without it.
        iso = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}
        ts = pd.to_datetime(pd.Series(flat), utc=True, **iso)
        out = (ts.astype("int64") // 1_000_000_000).to_numpy(dtype=np.float64)
    if len(out) != n:
        raise ValueError(f"drift update: {len(out)} event times for {n} transactions")
    return out


@dataclass
class _Acc:
    """What a window (or one hop of one) holds: histogram counts per monitored value, etc."""

    counts: dict[str, np.ndarray]
    missing: dict[str, int]
    # Per bin, how many of ``counts`` fell in the night hours (night-profiled inputs only).
    night: dict[str, np.ndarray] = field(default_factory=dict)
    n: int = 0
    alerts: int = 0
    blocks: int = 0
    t_min: float = math.inf
    t_max: float = -math.inf

    def merge(self, other: _Acc) -> None:
        for name, counts in other.counts.items():
            self.counts[name] += counts
        for name, k in other.missing.items():
            self.missing[name] += k
        for name, counts in other.night.items():
            self.night[name] += counts
        self.n += other.n
        self.alerts += other.alerts
        self.blocks += other.blocks
        self.t_min = min(self.t_min, other.t_min)
        self.t_max = max(self.t_max, other.t_max)


def _acc_state(acc: _Acc) -> dict[str, Any]:
    """``acc`` as JSON-ready data (``DriftMonitor._acc_from`` reads it back)."""
    return {
        "counts": {name: counts.tolist() for name, counts in acc.counts.items()},
        "missing": dict(acc.missing),
        "night": {name: counts.tolist() for name, counts in acc.night.items()},
        "n": acc.n,
        "alerts": acc.alerts,
        "blocks": acc.blocks,
        # JSON has no infinity (an empty accumulator's bounds); float() reads these back.
        "t_min": _float_text(acc.t_min),
        "t_max": _float_text(acc.t_max),
    }


def _float_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


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
        # transaction id -> alerted (review/block); insertion order = eviction order.
        self._pending: OrderedDict[str, bool] = OrderedDict()
        self._matched: deque[tuple[bool, bool]] = deque()
        self._tp = self._alerted = self._frauds = 0
        self.unmatched_labels = 0
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
        version = metadata.version
        where = f"model {metadata.model_name} version {version}"
        stats = metadata.training_stats
        if not stats:
            raise ValueError(
                f"{where}: metadata has no training_stats, so there is no reference to compare "
                "the stream with (was it pushed by the training pipeline?)"
            )
        review, block = metadata.thresholds.review, metadata.thresholds.block
        try:
            expected_alert = float(stats["expected_alert_rate"])
            expected_block = float(stats.get("expected_block_rate", math.nan))
            feature_stats = stats["features"]
            score_stats = stats[SCORE_FEATURE]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: metadata needs training_stats with features, {SCORE_FEATURE} and "
                f"expected_alert_rate ({err!r})"
            ) from err
        names = self.config.features or tuple(n for n in c.MODEL_INPUTS if n != c.TIMESTAMP)
        missing = [n for n in names if n not in feature_stats]
        if missing:
            raise ValueError(
                f"{where}: training_stats has no profile of {missing}: the model was trained "
                "against another feature contract"
            )
        # Everything is parsed before anything is assigned: a bad new reference leaves the
        # monitor on the old one.
        profiles = {n: _profile(n, feature_stats[n], where) for n in names}
        profiles[SCORE_FEATURE] = _profile(SCORE_FEATURE, score_stats, where)
        night_stats = stats.get("night")
        night: dict[str, _NightProfile] = {}
        if self.config.night_checked and night_stats is not None:
            if not isinstance(night_stats, Mapping) or any(n not in night_stats for n in names):
                raise ValueError(
                    f"{where}: training_stats.night must profile every monitored input {names}"
                )
            night = {
                n: _night_profile(n, night_stats[n], len(profiles[n].proportions), where)
                for n in names
            }
        self.model_name: str | None = metadata.model_name
        self.model_version: int | None = version
        self.review_threshold, self.block_threshold = review, block
        self.expected_alert_rate = expected_alert
        self.expected_block_rate = expected_block
        self.feature_names: tuple[str, ...] = tuple(names)
        self._profiles = profiles
        self._night = night
        self.metrics.expected_alert_rate.set(expected_alert)
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

    def _new_acc(self) -> _Acc:
        return _Acc(
            {n: np.zeros(len(p.proportions), np.int64) for n, p in self._profiles.items()},
            dict.fromkeys(self._profiles, 0),
            {n: np.zeros(len(p.proportions) // 2, np.int64) for n, p in self._night.items()},
        )

    def _reset_window(self) -> None:
        self._acc = self._new_acc()
        # Timed mode: hop index -> what arrived with event times in that hop.
        self._buckets: dict[int, _Acc] = {}
        self._open_hop: int | None = None
        self._first_hop: int | None = None

    # -- state -----------------------------------------------------------------------------------
    # Saved as they are: ints (the hops: int or None).
    _STATE_FIELDS = (
        "window_index",
        "consecutive",
        "_tp",
        "_alerted",
        "_frauds",
        "unmatched_labels",
        "_open_hop",
        "_first_hop",
    )

    def state(self) -> dict[str, Any]:
        """What a restarted consumer needs to carry on (windows, streak, label join) against
        the same model version, as JSON-ready data (lists, string-keyed dicts, numbers, with
        non-finite floats as strings); ``restore_state`` takes it back."""
        return {
            "model_version": self.model_version,
            "timed": self.config.timed,
            **{name: getattr(self, name) for name in self._STATE_FIELDS},
            "_pending": dict(self._pending),  # JSON objects keep their order
            "_matched": [list(pair) for pair in self._matched],
            "_acc": _acc_state(self._acc),
            # Pairs: JSON object keys are strings, hops are ints.
            "_buckets": [[hop, _acc_state(acc)] for hop, acc in self._buckets.items()],
        }

    def restore_state(self, state: Mapping[str, Any]) -> bool:
        """Take over a saved state; False (nothing changed) when it was saved against another
        model version or window kind, whose windows mean something else. A state that does not
        fit this reference (other inputs or bins) raises ValueError, changing nothing."""
        if state.get("model_version") != self.model_version or state.get("timed") != (
            self.config.timed
        ):
            return False
        plain = {name: state[name] for name in self._STATE_FIELDS}
        pending = OrderedDict((str(k), bool(v)) for k, v in state["_pending"].items())
        matched = deque((bool(a), bool(f)) for a, f in state["_matched"])
        acc = self._acc_from(state["_acc"])
        buckets = {int(hop): self._acc_from(raw) for hop, raw in state["_buckets"]}
        for name, value in plain.items():
            setattr(self, name, value)
        self._pending, self._matched, self._acc, self._buckets = pending, matched, acc, buckets
        self.metrics.consecutive_windows.set(self.consecutive)
        self.metrics.sustained.set(1 if self.sustained else 0)
        return True

    def _acc_from(self, raw: Mapping[str, Any]) -> _Acc:
        """An accumulator of this reference's shape holding ``_acc_state`` data."""
        acc = self._new_acc()
        for part in ("counts", "missing", "night"):
            if set(raw[part]) != set(getattr(acc, part)):
                raise ValueError(
                    f"drift state: {part} of {sorted(raw[part])}, the reference monitors "
                    f"{sorted(getattr(acc, part))}"
                )
        for part in ("counts", "night"):
            for name, counts in getattr(acc, part).items():
                saved = np.asarray(raw[part][name], dtype=np.int64)
                if saved.shape != counts.shape:
                    raise ValueError(
                        f"drift state: {len(saved)} {part} bins of {name!r}, the reference "
                        f"has {len(counts)}"
                    )
                counts[:] = saved
        acc.missing = {name: int(raw["missing"][name]) for name in acc.missing}
        acc.n, acc.alerts, acc.blocks = int(raw["n"]), int(raw["alerts"]), int(raw["blocks"])
        acc.t_min, acc.t_max = float(raw["t_min"]), float(raw["t_max"])
        return acc

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
        if self.config.timed:
            return self._window_acc(self._open_hop).n if self._open_hop is not None else 0
        return self._acc.n

    # -- input -----------------------------------------------------------------------------------
    def _columns(self, features: Any) -> tuple[dict[str, np.ndarray], Any]:
        if isinstance(features, Mapping):
            cols = features
        elif isinstance(features, Sequence):
            keys = features[0].keys() if features else self.feature_names
            names = [n for n in (*self.feature_names, c.TIMESTAMP) if n in keys]
            try:
                cols = {n: [row[n] for row in features] for n in names}
            except KeyError as err:
                raise ValueError(f"drift update: a feature row lacks {err}") from err
        else:
            raise TypeError(
                "drift update: features must be a mapping of columns or a sequence of row "
                f"mappings, got {type(features).__name__}"
            )
        missing = [n for n in self.feature_names if n not in cols]
        if missing:
            raise ValueError(f"drift update: features lack monitored input(s) {missing}")
        out = {n: _column(cols[n], None, n) for n in self.feature_names}
        return out, cols.get(c.TIMESTAMP)

    def update(
        self,
        features: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        scores: Any,
        decisions: Sequence[str] | None = None,
        event_times: Any = None,
        transaction_ids: Sequence[str] | None = None,
    ) -> list[DriftEvent]:
        """Add one batch; returns the events of the windows it closed (see the class doc)."""
        cols, ts_column = self._columns(features)
        score = _column(scores, None, SCORE_FEATURE)
        n = len(score)
        for name, col in cols.items():
            if len(col) != n:
                raise ValueError(f"drift update: {name!r} has {len(col)} values for {n} scores")
        if decisions is None:
            alerted = score >= self.review_threshold
            blocked = score >= self.block_threshold
        else:
            dec = np.asarray(decisions, dtype=object).reshape(-1)
            if len(dec) != n:
                raise ValueError(f"drift update: {len(dec)} decisions for {n} scores")
            unknown = set(dec.tolist()) - set(c.DECISIONS)
            if unknown:
                raise ValueError(f"drift update: unknown decision(s) {sorted(unknown)}")
            blocked = dec == c.BLOCK
            alerted = blocked | (dec == c.REVIEW)
        if event_times is None:
            event_times = ts_column
        times = None if event_times is None else _epoch_seconds(event_times, n)
        if transaction_ids is not None:
            if len(transaction_ids) != n:
                raise ValueError(f"drift update: {len(transaction_ids)} ids for {n} scores")
            self._remember(transaction_ids, alerted)
        cols[SCORE_FEATURE] = score

        events: list[DriftEvent] = []
        self._retrain_due = False
        if self.config.timed:
            if times is None:
                raise ValueError("drift update: event-time windows need event_times")
            return self._update_timed(cols, alerted, blocked, times)
        lo = 0
        while lo < n:
            take = min(n - lo, self.config.window_size - self._acc.n)
            hi = lo + take
            self._accumulate(self._acc, cols, alerted, blocked, times, slice(lo, hi))
            lo = hi
            if self._acc.n >= self.config.window_size:
                events.extend(self._close(self._acc))
                self._acc = self._new_acc()
        return events

    def _update_timed(
        self,
        cols: Mapping[str, np.ndarray],
        alerted: np.ndarray,
        blocked: np.ndarray,
        times: np.ndarray,
    ) -> list[DriftEvent]:
        cfg = self.config
        assert cfg.hop_seconds is not None
        hops = np.floor(times / cfg.hop_seconds).astype(np.int64)
        # Partitions interleave in a batch: take its rows hop by hop, so a window closes only
        # after every row of the batch that belongs to it was counted.
        order = np.argsort(hops, kind="stable")
        ordered = hops[order]
        firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[firsts[1:], len(order)]
        events: list[DriftEvent] = []
        for lo, hi in zip(firsts.tolist(), ends.tolist(), strict=True):
            hop = int(ordered[lo])
            if self._open_hop is None:
                self._open_hop = self._first_hop = hop
            elif hop > self._open_hop:
                # Event time passed the open hop: the window ending with it is complete.
                events.extend(self._close_timed(self._open_hop))
                self._open_hop = hop
                oldest = hop - self._hops_per_window + 1
                for old in [h for h in self._buckets if h < oldest]:
                    del self._buckets[old]
            # A row older than every retained hop still counts, in the oldest one.
            target = max(hop, self._open_hop - self._hops_per_window + 1)
            acc = self._buckets.get(target)
            if acc is None:
                acc = self._buckets[target] = self._new_acc()
            self._accumulate(acc, cols, alerted, blocked, times, order[lo:hi])
        return events

    @property
    def _hops_per_window(self) -> int:
        cfg = self.config
        assert cfg.window_seconds is not None and cfg.hop_seconds is not None
        return round(cfg.window_seconds / cfg.hop_seconds)

    def _window_acc(self, last_hop: int) -> _Acc:
        total = self._new_acc()
        for hop in range(last_hop - self._hops_per_window + 1, last_hop + 1):
            acc = self._buckets.get(hop)
            if acc is not None:
                total.merge(acc)
        return total

    def _close_timed(self, last_hop: int) -> list[DriftEvent]:
        assert self._first_hop is not None
        if last_hop - self._hops_per_window + 1 < self._first_hop:
            # The window reaches back before the first row seen (the stream's start, or a new
            # model's reference): it would hold only some hours of the day, and the daily
            # rhythm would read as drift (it did, in the demo's first 16 hours).
            return []
        acc = self._window_acc(last_hop)
        if acc.n < self.config.min_samples:
            return []  # too few rows to compare (a quiet period)
        return self._close(acc)

    def flush(self) -> list[DriftEvent]:
        """Close the partial window now (shutdown, a long pause): evaluated when it holds at
        least ``min_samples`` transactions, otherwise dropped."""
        self._retrain_due = False
        acc = self._window_acc(self._open_hop) if self._open_hop is not None else self._acc
        events: list[DriftEvent] = []
        if acc.n >= self.config.min_samples:
            events = self._close(acc)
        elif acc.n:
            log.info("drift: dropping a partial window of %d transactions (< min_samples)", acc.n)
        self._reset_window()
        return events

    def _accumulate(
        self,
        acc: _Acc,
        cols: Mapping[str, np.ndarray],
        alerted: np.ndarray,
        blocked: np.ndarray,
        times: np.ndarray | None,
        rows: slice | np.ndarray,
    ) -> None:
        night = c.is_night(times[rows]) if self._night and times is not None else None
        for name, prof in self._profiles.items():
            values = cols[name][rows]
            ok = np.isfinite(values)
            in_night = night
            if not ok.all():
                acc.missing[name] += int((~ok).sum())
                values = values[ok]
                in_night = None if night is None else night[ok]
            bins = np.searchsorted(prof.inner, values, side="right")
            acc.counts[name] += np.bincount(bins, minlength=len(prof.proportions))
            if in_night is not None and name in acc.night:
                acc.night[name] += np.bincount(bins[in_night], minlength=len(prof.proportions))
        taken = alerted[rows]
        acc.alerts += int(taken.sum())
        acc.blocks += int(blocked[rows].sum())
        if times is not None and len(taken):
            acc.t_min = min(acc.t_min, float(times[rows].min()))
            acc.t_max = max(acc.t_max, float(times[rows].max()))
        acc.n += len(taken)

    # -- window evaluation -----------------------------------------------------------------------
    def _close(self, acc: _Acc) -> list[DriftEvent]:
        cfg = self.config
        n = acc.n
        psis: dict[str, float] = {}
        jss: dict[str, float] = {}
        for name, prof in self._profiles.items():
            counts = acc.counts[name]
            if counts.sum() == 0:  # every value was missing: nothing to compare
                psis[name] = jss[name] = math.nan
                continue
            psis[name] = psi(counts, prof.proportions, cfg.epsilon)
            jss[name] = js_distance(counts, prof.proportions)
        excess = {
            name: night_excess(
                np.concatenate([acc.counts[name] - acc.night[name], acc.night[name]]),
                nprof,
                cfg.night_min_expected,
            )
            for name, nprof in self._night.items()
        }
        alert_rate = acc.alerts / n
        block_rate = acc.blocks / n
        ratio = alert_rate / self.expected_alert_rate if self.expected_alert_rate > 0 else None

        def crossed(name: str) -> bool:
            return psis[name] > cfg.psi_threshold or jss[name] > cfg.js_threshold

        drifted_inputs = tuple(n_ for n_ in self.feature_names if crossed(n_))
        # Profiles exist only while the check is on, so the threshold is set when they do.
        night_drift = tuple(n_ for n_ in excess if excess[n_].z > cfg.night_z_threshold)
        score_drift = crossed(SCORE_FEATURE)
        low, high = cfg.alert_rate_bounds
        alert_drift = False
        if n * self.expected_alert_rate >= cfg.min_expected_alerts:
            assert ratio is not None
            alert_drift = not low <= ratio <= high

        drifting = bool(drifted_inputs or score_drift or alert_drift or night_drift)
        self.consecutive = self.consecutive + 1 if drifting else 0
        sustained = self.sustained
        # Sticky within one update() call, which may close several windows.
        self._retrain_due |= sustained and self.consecutive % cfg.sustained_windows == 0
        t0 = None if math.isinf(acc.t_min) else acc.t_min
        t1 = None if math.isinf(acc.t_max) else acc.t_max
        detected_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def event(kind: str, names: tuple[str, ...], values: dict, thresholds: dict) -> DriftEvent:
            return DriftEvent(
                kind=kind,
                window=self.window_index,
                window_start=t0,
                window_end=t1,
                transactions=n,
                features=names,
                values=values,
                thresholds=thresholds,
                consecutive_windows=self.consecutive,
                sustained=sustained,
                model_name=self.model_name,
                model_version=self.model_version,
                detected_at=detected_at,
            )

        distance_thresholds = {"psi": cfg.psi_threshold, "js_distance": cfg.js_threshold}
        events: list[DriftEvent] = []
        if drifted_inputs:
            values = {k: {"psi": psis[k], "js_distance": jss[k]} for k in drifted_inputs}
            events.append(event(FEATURE_DRIFT, drifted_inputs, values, distance_thresholds))
        if score_drift:
            values = {
                SCORE_FEATURE: {"psi": psis[SCORE_FEATURE], "js_distance": jss[SCORE_FEATURE]}
            }
            events.append(event(SCORE_DRIFT, (SCORE_FEATURE,), values, distance_thresholds))
        if night_drift:
            values = {}
            for k in night_drift:
                bins = len(self._profiles[k].proportions)
                values[k] = {
                    "z": excess[k].z,
                    "night": excess[k].cell >= bins,
                    "bin": excess[k].cell % bins,
                    "observed": excess[k].observed,
                    "expected": excess[k].expected,
                }
            thresholds = {"z": cfg.night_z_threshold}
            events.append(event(NIGHT_EXCESS, night_drift, values, thresholds))
        if alert_drift:
            rates = {
                "alert_rate": alert_rate,
                "expected_alert_rate": self.expected_alert_rate,
                "ratio": ratio,
                "block_rate": block_rate,
                "expected_block_rate": self.expected_block_rate,
            }
            events.append(
                event(ALERT_RATE_DRIFT, (), {"alert_rate": rates}, {"ratio_bounds": [low, high]})
            )

        report = WindowReport(
            window=self.window_index,
            transactions=n,
            window_start=t0,
            window_end=t1,
            psi=psis,
            js_distance=jss,
            alert_rate=alert_rate,
            block_rate=block_rate,
            alert_ratio=ratio,
            missing={k: v for k, v in acc.missing.items() if v},
            drifting=drifting,
            events=tuple(events),
            night_excess_z={name: e.z for name, e in excess.items()},
        )
        self.reports.append(report)
        self._export(report)
        # Hourly hops over a drifting stream close a drifting window every hop: the log says
        # when drift starts, changes what it involves, or ends; repeats go to DEBUG (every
        # event is still on the drift-events topic and in the metrics).
        signature = "; ".join(f"{e.kind} {', '.join(e.features) or ''}".strip() for e in events)
        if events:
            log.log(
                logging.DEBUG if signature == self._logged_signature else logging.WARNING,
                "drift in window %d (%s .. %s, %d transactions): %s; %d drifting window(s) in "
                "a row%s",
                self.window_index,
                _iso(t0),
                _iso(t1),
                n,
                signature,
                self.consecutive,
                " (sustained)" if sustained else "",
            )
        elif self._logged_signature:
            log.info("drift ended in window %d (%s .. %s)", self.window_index, _iso(t0), _iso(t1))
        self._logged_signature = signature
        self.window_index += 1
        return events

    def _export(self, report: WindowReport) -> None:
        m = self.metrics
        for name in self._profiles:
            m.psi.labels(name).set(report.psi[name])
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
    def _remember(self, transaction_ids: Sequence[str], alerted: np.ndarray) -> None:
        pending = self._pending
        # One C-level update per batch (this runs for every transaction). A transaction decided
        # again (at-least-once) keeps its place in the eviction order and takes the latest flag.
        pending.update(zip(map(str, transaction_ids), alerted.tolist(), strict=True))
        while len(pending) > self.config.max_pending_labels:
            pending.popitem(last=False)

    def add_labels(self, labels: Iterable[Any] | Mapping[str, int]) -> int:
        """Join delayed labels to the decisions seen; returns how many matched.

        ``labels``: a mapping ``transaction_id -> is_fraud``, ``(transaction_id, is_fraud)``
        pairs, or objects with ``transaction_id`` and ``is_fraud`` attributes (the consumer's
        ``messages.Label``). Each decision is judged once: a repeated label (the labels topic is
        re-read after a rebalance) or one for a transaction this monitor never saw, or evicted,
        is counted in ``unmatched_labels`` and otherwise ignored.
        """
        items: Iterable[Any] = labels.items() if isinstance(labels, Mapping) else labels
        matched = 0
        window = self._matched
        for item in items:
            # Attributes first: the consumer's Label is a NamedTuple, i.e. also a tuple.
            if hasattr(item, "transaction_id"):
                tid, fraud = item.transaction_id, item.is_fraud
            else:
                tid, fraud = item
            alerted = self._pending.pop(str(tid), None)
            if alerted is None:
                self.unmatched_labels += 1
                continue
            is_fraud = bool(int(fraud))
            window.append((alerted, is_fraud))
            self._tp += alerted and is_fraud
            self._alerted += alerted
            self._frauds += is_fraud
            if len(window) > self.config.label_window:
                old_alerted, old_fraud = window.popleft()
                self._tp -= old_alerted and old_fraud
                self._alerted -= old_alerted
                self._frauds -= old_fraud
            matched += 1
        if matched:
            self.metrics.labels_matched.inc(matched)
            self.metrics.live_precision.set(self.live_precision)
            self.metrics.live_recall.set(self.live_recall)
        return matched

    @property
    def live_precision(self) -> float:
        """Frauds among the labelled alerts of the recent label window (NaN: no alert yet)."""
        return self._tp / self._alerted if self._alerted else math.nan

    @property
    def live_recall(self) -> float:
        """Alerted share of the labelled frauds of the recent label window (NaN: no fraud yet)."""
        return self._tp / self._frauds if self._frauds else math.nan

    @property
    def pending_labels(self) -> int:
        return len(self._pending)
