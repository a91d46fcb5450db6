"""What ``monitoring.drift.DriftMonitor`` reports: one ``WindowReport`` per evaluated window,
and a ``DriftEvent`` per check a window crossed (the drift-events topic's messages)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core import contract as c

# The score distribution is monitored like a feature, under this name (a metric label value).
SCORE_FEATURE = "score"

# Event kinds (the ``kind`` of a DriftEvent and a metric label).
FEATURE_DRIFT = "feature_drift"
SCORE_DRIFT = "score_drift"
ALERT_RATE_DRIFT = "alert_rate"
NIGHT_EXCESS = "night_excess"
EVENT_KINDS: tuple[str, ...] = (FEATURE_DRIFT, SCORE_DRIFT, ALERT_RATE_DRIFT, NIGHT_EXCESS)


def iso_utc(epoch: float | None) -> str | None:
    """An epoch time as the contract's timestamp text (None stays None)."""
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
            "window_start": iso_utc(self.window_start),
            "window_end": iso_utc(self.window_end),
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
