"""The promotion rule of a canary: promote when it is no worse than stable, roll back when it is
worse or errors. ``PromotionPolicy.update`` judges each shadow batch (streaming.shadow).

The rule, checked in this order after every shadow batch and every joined label:

1. **Errors** (no labels needed). Roll back after ``max_consecutive_errors`` failed shadow
   batches in a row, or once ``min_batches`` were shadowed and more than ``max_error_rate`` of
   them failed (timeouts, 5xx, refused rows, unusable answers).
2. **Alert budget** (no labels needed). Once ``min_transactions`` (drift path:
   ``drift_min_transactions``) were shadow-scored, roll back when the canary would alert on
   more than ``max_alert_rate`` of them: it would flood the reviewers whatever its recall.
3. **Paired comparison on labels.** Once ``min_labelled_frauds`` frauds among the
   shadow-scored transactions have their label, both versions are judged on the *same*
   labelled transactions: the canary is no worse when its recall is at least stable's minus
   ``max_recall_drop`` and its precision at least stable's minus ``max_precision_drop``
   (promote), else it is worse (roll back).
4. **Drift fast path.** For a version a drift-triggered retrain pushed, the stable version is
   known to be degraded, so neither labels nor agreement with it are waited for: promote once
   ``drift_min_transactions`` were shadow-scored and checks 1-2 pass.
5. **Maximum shadow duration.** Once ``max_shadow_s`` passed without enough labelled frauds:
   promote when the label-free checks pass and the canary's score distribution stays close to
   stable's on the same transactions (PSI at most ``max_score_psi``, over the score buckets of
   the consumer's metrics), i.e. it behaves as the version known to be good; otherwise roll
   back, because it could not be shown no worse.

Durations are event time (the transactions' timestamps), so a replay at any speed is judged as
live traffic would be, and a seeded stream always gives the same verdict at the same batch.

>>> import numpy as np
>>> from streaming.scoring import ModelThresholds, Scored
>>> from streaming.shadow import ShadowBatch
>>> rng = np.random.default_rng(0)
>>> def batch(i, canary_ok=True):
...     scores = rng.random(100).tolist()
...     stable = Scored(scores, ModelThresholds(1, 0.95, 0.99, 7), 0.01)
...     canary = Scored(scores, ModelThresholds(2, 0.95, 0.99, 7), 0.01) if canary_ok else None
...     ids = [f"t{i}-{j}" for j in range(100)]
...     return ShadowBatch(ids, [i * 3600] * 100, stable, 2, canary)
>>> policy = PromotionPolicy(PromotionConfig(min_batches=5, max_consecutive_errors=3), 1, 2)
>>> [policy.update(batch(i, canary_ok=i < 2)) for i in range(5)][-1].reason
'the canary failed 3 shadow batches in a row'
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from core import contract as c
from monitoring.checks.distribution import psi
from streaming.metrics import SCORE_BUCKETS
from streaming.shadow import ShadowBatch

PROMOTE, ROLLBACK = "promote", "rollback"


@dataclass(frozen=True)
class PromotionConfig:
    """The thresholds of the rule above (``fraud stream consume --rollout-set NAME=VALUE``)."""

    min_batches: int = 20
    max_error_rate: float = 0.05
    max_consecutive_errors: int = 5
    min_transactions: int = 5_000
    max_alert_rate: float = 0.05
    min_labelled_frauds: int = 30
    max_recall_drop: float = 0.02
    max_precision_drop: float = 0.05
    max_score_psi: float = 0.1
    max_shadow_s: float = float((c.DEFAULT_LABEL_DELAY_DAYS + 7) * c.SECONDS_PER_DAY)
    drift_min_transactions: int = 2_000
    # Shadow-scored transactions remembered for the label join (the oldest go first).
    max_pending: int = 500_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"rollout policy: {f.name} must be a number >= 0, got {value!r}")
        for name in ("max_error_rate", "max_alert_rate", "max_recall_drop", "max_precision_drop"):
            if getattr(self, name) > 1:
                raise ValueError(f"rollout policy: {name} is a share, got {getattr(self, name)}")

    @classmethod
    def parse(cls, assignments: Iterable[str]) -> PromotionConfig:
        """From ``NAME=VALUE`` texts; an unknown name or a bad value is refused by name."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for text in assignments:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise ValueError(
                    f"rollout policy: {text!r} is not NAME=VALUE with NAME one of "
                    f"{', '.join(known)}"
                )
            kind = int if isinstance(getattr(cls(), name), int) else float
            try:
                values[name] = kind(raw)
            except ValueError as err:
                raise ValueError(f"rollout policy: {name}={raw!r}: {err}") from err
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    action: str  # PROMOTE or ROLLBACK
    reason: str
    figures: Mapping[str, Any]


@dataclass
class _Labelled:
    """Counts over the labelled shadow-scored transactions."""

    transactions: int = 0
    frauds: int = 0
    stable_caught: int = 0
    canary_caught: int = 0
    stable_alerts: int = 0
    canary_alerts: int = 0

    def recall(self, caught: int) -> float:
        return caught / self.frauds if self.frauds else math.nan

    @staticmethod
    def precision(caught: int, alerts: int) -> float:
        return caught / alerts if alerts else math.nan


class PromotionPolicy:
    """Judges one canary version against one stable version from shadow batches and labels.

    ``update`` returns the ``Verdict`` the first time the rule reaches one (then None: a
    verdict is final); ``add_labels`` joins labels without judging (the next ``update`` or
    ``judge`` does). Not thread-safe: the caller serialises.
    """

    def __init__(
        self, config: PromotionConfig, stable: int, canary: int, drift_triggered: bool = False
    ) -> None:
        self.config = config
        self.stable = stable
        self.canary = canary
        self.drift_triggered = drift_triggered
        self.verdict: Verdict | None = None
        # Event time (ShadowBatch.event_time) of the first shadow batch, and the newest.
        self.started_at: float | None = None
        self.now: float | None = None
        self.batches = self.errors = self.consecutive_errors = 0
        self.transactions = self.stable_alerts = self.canary_alerts = 0
        bins = len(SCORE_BUCKETS) + 1
        self.stable_hist = np.zeros(bins, dtype=np.int64)
        self.canary_hist = np.zeros(bins, dtype=np.int64)
        self.labelled = _Labelled()
        # transaction id -> (stable alerted, canary alerted), awaiting its label.
        self.pending: OrderedDict[str, tuple[bool, bool]] = OrderedDict()

    # -- evidence ------------------------------------------------------------------------------
    def update(self, batch: ShadowBatch) -> Verdict | None:
        if self.verdict is not None:
            return None
        now = batch.event_time()
        if now is not None:
            self.started_at = now if self.started_at is None else self.started_at
            self.now = now if self.now is None else max(self.now, now)
        self.batches += 1
        if batch.canary is None:
            self.errors += 1
            self.consecutive_errors += 1
        else:
            self.consecutive_errors = 0
            self._count(batch)
        return self.judge()

    def _count(self, batch: ShadowBatch) -> None:
        assert batch.canary is not None
        stable_alerts, canary_alerts = batch.stable_alerts(), batch.canary_alerts()
        self.transactions += len(stable_alerts)
        self.stable_alerts += sum(stable_alerts)
        self.canary_alerts += sum(canary_alerts)
        for hist, scores in (
            (self.stable_hist, batch.stable.scores),
            (self.canary_hist, batch.canary.scores),
        ):
            idx = np.searchsorted(SCORE_BUCKETS, np.asarray(scores, dtype=np.float64), side="left")
            hist += np.bincount(idx, minlength=len(hist))
        pending = self.pending
        pending.update(
            zip(batch.transaction_ids, zip(stable_alerts, canary_alerts, strict=True), strict=True)
        )
        while len(pending) > self.config.max_pending:
            pending.popitem(last=False)

    def add_labels(self, labels: Iterable[Any]) -> int:
        """Join labels (``messages.Label`` or (transaction id, is_fraud) pairs); returns how
        many matched a shadow-scored transaction."""
        matched = 0
        counts = self.labelled
        for item in labels:
            if hasattr(item, "transaction_id"):
                tid, fraud = item.transaction_id, item.is_fraud
            else:
                tid, fraud = item
            alerts = self.pending.pop(str(tid), None)
            if alerts is None:
                continue
            stable_alert, canary_alert = alerts
            is_fraud = bool(int(fraud))
            counts.transactions += 1
            counts.stable_alerts += stable_alert
            counts.canary_alerts += canary_alert
            if is_fraud:
                counts.frauds += 1
                counts.stable_caught += stable_alert
                counts.canary_caught += canary_alert
            matched += 1
        return matched

    # -- the rule ------------------------------------------------------------------------------
    def judge(self) -> Verdict | None:
        """Apply the rule (module docstring) to the evidence so far; the verdict, if any."""
        if self.verdict is None:
            decided = self._rule()
            if decided is not None:
                self.verdict = Verdict(decided[0], decided[1], self.figures())
        return self.verdict

    def _rule(self) -> tuple[str, str] | None:
        cfg, figures = self.config, self.figures()
        if self.consecutive_errors >= cfg.max_consecutive_errors:
            return ROLLBACK, f"the canary failed {self.consecutive_errors} shadow batches in a row"
        error_rate = figures["error_rate"]
        if self.batches >= cfg.min_batches and error_rate > cfg.max_error_rate:
            return ROLLBACK, (
                f"the canary failed {error_rate:.1%} of {self.batches} shadow batches "
                f"(max {cfg.max_error_rate:.1%})"
            )
        enough = cfg.drift_min_transactions if self.drift_triggered else cfg.min_transactions
        if self.transactions >= enough and figures["canary_alert_rate"] > cfg.max_alert_rate:
            return ROLLBACK, (
                f"the canary would alert on {figures['canary_alert_rate']:.2%} of "
                f"{self.transactions} transactions, over the {cfg.max_alert_rate:.2%} budget"
            )
        if self.labelled.frauds >= cfg.min_labelled_frauds:
            return self._paired(figures)
        if self.drift_triggered and self.transactions >= enough:
            return PROMOTE, (
                f"drift-triggered retrain: label-free checks pass on {self.transactions} "
                "transactions and the stable version is known to be degraded"
            )
        if figures["elapsed_s"] >= cfg.max_shadow_s:
            return self._timed_out(figures)
        return None

    def _paired(self, figures: Mapping[str, Any]) -> tuple[str, str]:
        cfg = self.config
        s_recall, c_recall = figures["stable_recall"], figures["canary_recall"]
        s_prec, c_prec = figures["stable_precision"], figures["canary_precision"]
        what = (
            f"on the same {self.labelled.transactions} labelled transactions "
            f"({self.labelled.frauds} frauds): recall {c_recall:.3f} vs stable {s_recall:.3f}, "
            f"precision {_text(c_prec)} vs stable {_text(s_prec)}"
        )
        recall_ok = c_recall >= s_recall - cfg.max_recall_drop
        # No stable alert: nothing to fall short of. No canary alert: it catches nothing.
        precision_ok = math.isnan(s_prec) or (
            not math.isnan(c_prec) and c_prec >= s_prec - cfg.max_precision_drop
        )
        if recall_ok and precision_ok:
            return PROMOTE, f"no worse {what}"
        return ROLLBACK, f"worse {what}"

    def _timed_out(self, figures: Mapping[str, Any]) -> tuple[str, str]:
        cfg = self.config
        days = cfg.max_shadow_s / c.SECONDS_PER_DAY
        short = (
            f"{self.labelled.frauds} labelled frauds (of {cfg.min_labelled_frauds}) after "
            f"{days:g} days of shadow scoring"
        )
        score_psi = figures["score_psi"]
        if self.transactions >= cfg.min_transactions and score_psi <= cfg.max_score_psi:
            return PROMOTE, (
                f"{short}; label-free checks pass and its scores agree with stable's "
                f"(PSI {score_psi:.3f} <= {cfg.max_score_psi})"
            )
        return ROLLBACK, (
            f"{short}; not shown no worse ({self.transactions} shadow-scored transactions, "
            f"score PSI {_text(score_psi)} vs max {cfg.max_score_psi})"
        )

    def figures(self) -> dict[str, Any]:
        """Everything the rule looks at, for events, metrics and the demo report."""
        lab = self.labelled
        start, now = self.started_at, self.now
        return {
            "stable_version": self.stable,
            "canary_version": self.canary,
            "drift_triggered": self.drift_triggered,
            "batches": self.batches,
            "errors": self.errors,
            "error_rate": self.errors / self.batches if self.batches else 0.0,
            "transactions": self.transactions,
            "stable_alert_rate": _rate(self.stable_alerts, self.transactions),
            "canary_alert_rate": _rate(self.canary_alerts, self.transactions),
            "score_psi": (
                psi(self.canary_hist, self.stable_hist) if self.transactions else math.nan
            ),
            "labelled": lab.transactions,
            "labelled_frauds": lab.frauds,
            "stable_recall": lab.recall(lab.stable_caught),
            "canary_recall": lab.recall(lab.canary_caught),
            "stable_precision": lab.precision(lab.stable_caught, lab.stable_alerts),
            "canary_precision": lab.precision(lab.canary_caught, lab.canary_alerts),
            "elapsed_s": (now - start) if start is not None and now is not None else 0.0,
        }


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _text(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def json_figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    """``figures`` for a JSON message: NaN (nothing to measure yet) travels as null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in figures.items()
    }
