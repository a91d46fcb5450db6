"""Configuration of ``monitoring.drift.DriftMonitor``: windows, thresholds, label join."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core import contract as c


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
