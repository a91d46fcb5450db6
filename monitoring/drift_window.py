"""The windows of ``monitoring.drift.DriftMonitor``: what one holds, and event-time hops.

``reference_window`` reads a model's training statistics into the checks of an empty window.
A ``Window`` holds the counts of every drift check over the same rows (a window, or one hop of
one) plus their event-time bounds; ``HopWindows`` keeps one ``Window`` per hop of event time
and merges the last hops into the window that ends with a hop once event time passes it.
``Window.state`` and ``HopWindows.state`` are the ``_acc`` and ``_buckets`` entries of the drift
state document (``monitoring.loop``): JSON-ready, restored exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from core import contract as c
from core.metadata import ModelMetadata
from monitoring.checks.alert_rate import AlertRateCheck, AlertVerdict
from monitoring.checks.distribution import DistributionShift, Profile, ShiftVerdict
from monitoring.checks.night import NightExcessCheck, NightProfile, NightVerdict
from monitoring.drift_batch import Batch
from monitoring.drift_config import DriftConfig
from monitoring.drift_events import (
    ALERT_RATE_DRIFT,
    FEATURE_DRIFT,
    NIGHT_EXCESS,
    SCORE_DRIFT,
    SCORE_FEATURE,
)


class Crossed(NamedTuple):
    """One check a window crossed: its drift event's kind, inputs, values and thresholds."""

    kind: str
    features: tuple[str, ...]  # SCORE_FEATURE for score drift; () for the alert rate
    values: dict[str, dict[str, Any]]
    thresholds: dict[str, Any]


class WindowVerdict(NamedTuple):
    """Every check's verdict on one window, and the checks it crossed (in event order)."""

    inputs: ShiftVerdict
    score: ShiftVerdict
    night: NightVerdict
    alerts: AlertVerdict
    crossed: tuple[Crossed, ...]


class Window:
    """The checks' counts over one set of rows: the inputs' and the score's histograms, the
    inputs' night counts, the decisions, and the earliest and latest event time."""

    def __init__(
        self,
        inputs: DistributionShift,
        score: DistributionShift,
        night: NightExcessCheck,
        alerts: AlertRateCheck,
    ) -> None:
        self.inputs, self.score, self.night, self.alerts = inputs, score, night, alerts
        self.t_min, self.t_max = math.inf, -math.inf

    def empty(self) -> Window:
        """A window of the same checks with nothing counted."""
        return Window(
            self.inputs.empty(), self.score.empty(), self.night.empty(), self.alerts.empty()
        )

    @property
    def n(self) -> int:
        return self.alerts.n

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """Histogram counts per monitored value (the inputs, then the score)."""
        return {**self.inputs.counts, **self.score.counts}

    @property
    def missing(self) -> dict[str, int]:
        """Non-finite values skipped, per monitored value."""
        return {**self.inputs.missing, **self.score.missing}

    def update(self, batch: Batch, rows: slice | np.ndarray) -> None:
        """Count ``rows`` of ``batch``."""
        columns = {name: column[rows] for name, column in batch.columns.items()}
        binned = self.inputs.update(columns)
        self.score.update(columns)
        times = None if batch.times is None else batch.times[rows]
        if self.night.profiles and times is not None:
            self.night.update(binned, c.is_night(times))
        self.alerts.update(batch.alerted[rows], batch.blocked[rows])
        if times is not None and len(times):
            self.t_min = min(self.t_min, float(times.min()))
            self.t_max = max(self.t_max, float(times.max()))

    def merge(self, other: Window) -> None:
        """Add what ``other`` (a window of the same checks) counted."""
        self.inputs.merge(other.inputs)
        self.score.merge(other.score)
        self.night.merge(other.night)
        self.alerts.merge(other.alerts)
        self.t_min = min(self.t_min, other.t_min)
        self.t_max = max(self.t_max, other.t_max)

    def verdict(self) -> WindowVerdict:
        """What the checks make of the rows counted (at least one)."""
        inputs, score = self.inputs.verdict(), self.score.verdict()
        night = self.night.verdict(self.inputs.counts)
        alerts = self.alerts.verdict()
        distance = {"psi": self.inputs.psi_threshold, "js_distance": self.inputs.js_threshold}
        checks = (
            (inputs.drifted, FEATURE_DRIFT, inputs.values(inputs.drifted), distance),
            (score.drifted, SCORE_DRIFT, score.values(score.drifted), distance),
            (night.drifted, NIGHT_EXCESS, night.values, {"z": self.night.z_threshold}),
        )
        crossed = [Crossed(kind, names, v, t) for names, kind, v, t in checks if names]
        if alerts.drifting:
            bounds = {"ratio_bounds": list(self.alerts.bounds)}
            crossed.append(Crossed(ALERT_RATE_DRIFT, (), {"alert_rate": alerts.rates}, bounds))
        return WindowVerdict(inputs, score, night, alerts, tuple(crossed))

    def state(self) -> dict[str, Any]:
        """The counts as JSON-ready data (``restored`` reads them back)."""
        return {
            "counts": {name: counts.tolist() for name, counts in self.counts.items()},
            "missing": self.missing,
            "night": {name: counts.tolist() for name, counts in self.night.night.items()},
            "n": self.n,
            "alerts": self.alerts.alerts,
            "blocks": self.alerts.blocks,
            # JSON has no infinity (an empty window's bounds); float() reads these back.
            "t_min": _float_text(self.t_min),
            "t_max": _float_text(self.t_max),
        }

    def restored(self, raw: Mapping[str, Any]) -> Window:
        """A window of these checks holding ``state`` data; ValueError when the data counts
        other values or bins."""
        window = self.empty()
        parts = {"counts": window.counts, "missing": window.missing, "night": window.night.night}
        for part, held in parts.items():
            if set(raw[part]) != set(held):
                raise ValueError(
                    f"drift state: {part} of {sorted(raw[part])}, the reference monitors "
                    f"{sorted(held)}"
                )
        for part in ("counts", "night"):
            # The arrays are the checks' own: filled in place.
            for name, counts in parts[part].items():
                saved = np.asarray(raw[part][name], dtype=np.int64)
                if saved.shape != counts.shape:
                    raise ValueError(
                        f"drift state: {len(saved)} {part} bins of {name!r}, the reference "
                        f"has {len(counts)}"
                    )
                counts[:] = saved
        for check in (window.inputs, window.score):
            check.missing = {name: int(raw["missing"][name]) for name in check.missing}
        alerts = window.alerts
        alerts.n, alerts.alerts, alerts.blocks = (
            int(raw["n"]),
            int(raw["alerts"]),
            int(raw["blocks"]),
        )
        window.t_min, window.t_max = float(raw["t_min"]), float(raw["t_max"])
        return window


def reference_window(metadata: ModelMetadata, config: DriftConfig) -> Window:
    """The empty window of ``config``'s checks against ``metadata``'s training statistics;
    ValueError naming the model version when they are missing or malformed."""
    where = f"model {metadata.model_name} version {metadata.version}"
    stats = metadata.training_stats
    if not stats:
        raise ValueError(
            f"{where}: metadata has no training_stats, so there is no reference to compare "
            "the stream with (was it pushed by the training pipeline?)"
        )
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
    names = config.features or tuple(n for n in c.MODEL_INPUTS if n != c.TIMESTAMP)
    missing = [n for n in names if n not in feature_stats]
    if missing:
        raise ValueError(
            f"{where}: training_stats has no profile of {missing}: the model was trained "
            "against another feature contract"
        )
    profiles = {n: Profile.parse(n, feature_stats[n], where) for n in names}
    score = Profile.parse(SCORE_FEATURE, score_stats, where)
    night_stats = stats.get("night")
    night: dict[str, NightProfile] = {}
    if config.night_checked and night_stats is not None:
        if not isinstance(night_stats, Mapping) or any(n not in night_stats for n in names):
            raise ValueError(
                f"{where}: training_stats.night must profile every monitored input {names}"
            )
        night = {n: NightProfile.parse(n, night_stats[n], profiles[n].bins, where) for n in names}
    distance = (config.psi_threshold, config.js_threshold, config.epsilon)
    return Window(
        DistributionShift(profiles, *distance),
        DistributionShift({SCORE_FEATURE: score}, *distance),
        # Night profiles exist only while the check is on, so its threshold is set when they do.
        NightExcessCheck(night, config.night_z_threshold or math.inf, config.night_min_expected),
        AlertRateCheck(
            expected_alert, expected_block, config.alert_rate_bounds, config.min_expected_alerts
        ),
    )


def _float_text(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


class HopWindows:
    """Event-time windows of ``hops_per_window`` hops of ``hop_seconds``, one ``Window`` per hop.

    The window ending with hop h completes when the first row of a later hop arrives, over the
    rows of hops (h - hops_per_window, h]; a row later than its hop's window still counts in the
    windows that follow, in the oldest hop kept.
    """

    def __init__(self, hop_seconds: float, hops_per_window: int, template: Window) -> None:
        self.hop_seconds, self.hops_per_window = hop_seconds, hops_per_window
        self.template = template
        self.buckets: dict[int, Window] = {}
        self.open_hop: int | None = None  # the latest hop seen
        self.first_hop: int | None = None  # the first hop seen (since the start or a reset)

    def add(self, batch: Batch) -> list[Window]:
        """Count ``batch`` (which needs event times); returns the windows it completed, oldest
        first, except those reaching back before the first hop seen: these would hold only
        some hours of the day, and the daily rhythm would read as drift."""
        assert batch.times is not None
        hops = np.floor(batch.times / self.hop_seconds).astype(np.int64)
        # Partitions interleave in a batch: take its rows hop by hop, so a window completes
        # only after every row of the batch that belongs to it was counted.
        order = np.argsort(hops, kind="stable")
        ordered = hops[order]
        firsts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[firsts[1:], len(order)]
        completed: list[Window] = []
        for lo, hi in zip(firsts.tolist(), ends.tolist(), strict=True):
            hop = int(ordered[lo])
            if self.open_hop is None or self.first_hop is None:
                self.open_hop = self.first_hop = hop
            elif hop > self.open_hop:
                if self.open_hop - self.hops_per_window + 1 >= self.first_hop:
                    completed.append(self.window())
                self.open_hop = hop
                oldest = hop - self.hops_per_window + 1
                for old in [h for h in self.buckets if h < oldest]:
                    del self.buckets[old]
            # A row older than every retained hop still counts, in the oldest one.
            target = max(hop, self.open_hop - self.hops_per_window + 1)
            bucket = self.buckets.get(target)
            if bucket is None:
                bucket = self.buckets[target] = self.template.empty()
            bucket.update(batch, order[lo:hi])
        return completed

    def window(self) -> Window:
        """The rows of the window ending with the open hop (empty before the first row)."""
        total = self.template.empty()
        if self.open_hop is not None:
            for hop in range(self.open_hop - self.hops_per_window + 1, self.open_hop + 1):
                bucket = self.buckets.get(hop)
                if bucket is not None:
                    total.merge(bucket)
        return total

    def state(self) -> list[list[Any]]:
        """The hops' windows as ``[hop, Window.state()]`` pairs (JSON object keys are strings,
        hops are ints); ``open_hop`` and ``first_hop`` are saved beside them."""
        return [[hop, window.state()] for hop, window in self.buckets.items()]

    def restore(
        self, buckets: list[list[Any]], open_hop: int | None, first_hop: int | None
    ) -> None:
        """Take back what ``state``, ``open_hop`` and ``first_hop`` held; ValueError (nothing
        changed) when the hops' data counts other values or bins."""
        restored = {int(hop): self.template.restored(raw) for hop, raw in buckets}
        self.buckets, self.open_hop, self.first_hop = restored, open_hop, first_hop
