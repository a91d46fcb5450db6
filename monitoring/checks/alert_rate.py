"""Alert rate: the share of review + block decisions of a window against the expected rate.

The expected rate is what the served model's thresholds produced on its evaluation window
(``training_stats.expected_alert_rate``). The window drifts when observed / expected leaves
``bounds``; a window expected to hold fewer than ``min_expected_alerts`` alerts is not judged
(its ratio is mostly noise).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> check = AlertRateCheck(0.01, 0.002, bounds=(0.5, 2.0), min_expected_alerts=10.0)
>>> alerted = rng.random(2_000) < 0.03
>>> check.update(alerted, alerted & (rng.random(2_000) < 0.2))
>>> check.n, check.alerts, check.blocks
(2000, 73, 17)
>>> verdict = check.verdict()
>>> verdict.alert_rate, verdict.block_rate, round(verdict.ratio, 2), verdict.drifting
(0.0365, 0.0085, 3.65, True)
>>> quiet = check.empty()
>>> quiet.update(np.zeros(500, bool), np.zeros(500, bool))
>>> quiet.verdict().drifting  # 5 alerts expected: too few to judge
False
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class AlertVerdict(NamedTuple):
    alert_rate: float
    block_rate: float
    ratio: float | None  # observed / expected; None when nothing is expected
    drifting: bool
    rates: dict[str, Any]  # the rates and their expectations (a drift event's values)


class AlertRateCheck:
    """Decisions counted over one window (``update``, ``merge``) and their alert rate against
    the expected one (``verdict``)."""

    def __init__(
        self,
        expected_alert_rate: float,
        expected_block_rate: float,
        bounds: tuple[float, float],
        min_expected_alerts: float,
    ) -> None:
        self.expected_alert_rate, self.expected_block_rate = (
            expected_alert_rate,
            expected_block_rate,
        )
        self.bounds, self.min_expected_alerts = bounds, min_expected_alerts
        self.n = self.alerts = self.blocks = 0

    def empty(self) -> AlertRateCheck:
        """A check of the same expectations with nothing counted (the next window)."""
        return AlertRateCheck(
            self.expected_alert_rate,
            self.expected_block_rate,
            self.bounds,
            self.min_expected_alerts,
        )

    def update(self, alerted: np.ndarray, blocked: np.ndarray) -> None:
        """Count one batch: a flag per transaction, alerted (review or block) and blocked."""
        self.alerts += int(alerted.sum())
        self.blocks += int(blocked.sum())
        self.n += len(alerted)

    def merge(self, other: AlertRateCheck) -> None:
        """Add what ``other`` counted."""
        self.n += other.n
        self.alerts += other.alerts
        self.blocks += other.blocks

    def verdict(self) -> AlertVerdict:
        """The window's rates and whether their ratio to the expected one is out of bounds."""
        if not self.n:
            raise ValueError("alert rate: the window holds no transaction")
        alert_rate, block_rate = self.alerts / self.n, self.blocks / self.n
        expected = self.expected_alert_rate
        ratio = alert_rate / expected if expected > 0 else None
        low, high = self.bounds
        drifting = False
        if ratio is not None and self.n * expected >= self.min_expected_alerts:
            drifting = not low <= ratio <= high
        rates = {
            "alert_rate": alert_rate,
            "expected_alert_rate": expected,
            "ratio": ratio,
            "block_rate": block_rate,
            "expected_block_rate": self.expected_block_rate,
        }
        return AlertVerdict(alert_rate, block_rate, ratio, drifting, rates)
