"""Model quality from the delayed labels, per model version and segment, as they arrive.

``QualityMonitor`` remembers each decision (model version, score, decision, amount, segment
bands) by transaction id (``observe``), joins the labels to them (``add_labels``) and exports
``monitoring.metrics.QualityMetrics``:

* counters of labelled decisions and of their amounts by version, segment band, decision and
  truth. Windowed precision, recall, false-positive rate and the money blocked, sent to review
  and missed are ratios of their ``increase()`` over the window the dashboard picks;
* the average precision of the scores over the ``ap_window`` most recent labelled decisions of
  each version (a gauge: AP needs the ranking, which counters lose);
* decisions still without a label ``censor_after_s`` of event time after they were made.

Segments (``SEGMENTS``) have a fixed set of bands each, so the label cardinality is bounded:
per version 10 bands x 3 decisions x 2 truths; only the ``max_versions`` most recent versions
keep their series.

Blocked transactions never get a natural label (a declined payment is not disputed): only a
confirmed outcome (an analyst's review, see ``fraud label``) labels them. Every metric counts
labelled decisions only, so a blocked transaction is counted from its confirmed outcome or not
at all (censored, in ``fraud_quality_unlabelled_total{decision="block"}``): precision of blocks
is over confirmed blocks, and recall's frauds miss the unconfirmed blocked ones. Retraining
trains on labelled rows only (``monitoring.retrain_data``), so an unconfirmed block is dropped,
never learned as legitimate.

Not thread-safe: call from the consumer's loop thread, as ``DriftLoop`` does.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from core import contract as c
from monitoring.metrics import ALL_SEGMENT, QualityMetrics

DECISIONS = (c.APPROVE, c.REVIEW, c.BLOCK)
TRUTHS = ("0", "1")
AMOUNT_BAND_EDGES = (25.0, 100.0)
AMOUNT_BANDS = ("under_25", "25_to_100", "100_plus")
NEW_CUSTOMER_WINDOW = "30d"
TERMINAL_RISK_WINDOW = "30d"
# segment -> its bands, in the order ``bands_of`` returns them.
SEGMENTS: dict[str, tuple[str, ...]] = {
    ALL_SEGMENT: (ALL_SEGMENT,),
    "amount_band": AMOUNT_BANDS,
    "time_of_day": ("day", "night"),
    "customer": ("known", "new"),
    "terminal_risk": ("clean", "flagged"),
}
# The inputs ``observe`` needs besides the amount.
SEGMENT_INPUTS = (
    c.customer_count(NEW_CUSTOMER_WINDOW),
    c.terminal_fraud_ratio(TERMINAL_RISK_WINDOW),
)


class Decided(NamedTuple):
    version: str
    score: float
    decision: str
    amount: float
    event_time: int
    bands: tuple[str, ...]  # one per segment, SEGMENTS order


def bands_of(
    amount: Any, event_times: Any, customer_count: Any, terminal_ratio: Any
) -> list[tuple[str, ...]]:
    """Each transaction's band in every segment (columns in, one tuple per row out).

    >>> bands_of([10.0, 250.0], [12 * 3600, 23 * 3600], [1.0, 5.0], [0.0, 0.2])
    [('all', 'under_25', 'day', 'new', 'clean'), ('all', '100_plus', 'night', 'known', 'flagged')]
    """
    amount = np.asarray(amount, dtype=np.float64)
    amount_band = np.searchsorted(np.asarray(AMOUNT_BAND_EDGES), amount, side="right")
    night = c.is_night(np.asarray(event_times, dtype=np.int64))
    # The current transaction is in its own count: 1 means none before it in the window.
    new = np.asarray(customer_count, dtype=np.float64) <= 1
    flagged = np.asarray(terminal_ratio, dtype=np.float64) > 0
    return [
        (
            ALL_SEGMENT,
            AMOUNT_BANDS[a],
            "night" if n else "day",
            "new" if w else "known",
            "flagged" if f else "clean",
        )
        for a, n, w, f in zip(
            amount_band.tolist(), night.tolist(), new.tolist(), flagged.tolist(), strict=True
        )
    ]


def average_precision(scores: Sequence[float], frauds: Sequence[bool]) -> float:
    """Average precision (sklearn's definition: precision at each fraud's rank, ties grouped);
    NaN without a fraud.

    >>> average_precision([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    0.8333333333333333
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(frauds, dtype=bool)
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Ties: one threshold per distinct score, as a PR curve has.
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_step = np.diff(np.r_[0, tp]) / y.sum()
    return float((precision * recall_step).sum())


class QualityMonitor:
    """Decisions waiting for their label, and the labelled ones' quality metrics."""

    def __init__(
        self,
        metrics: QualityMetrics | None = None,
        max_pending: int = 500_000,
        ap_window: int = 10_000,
        max_versions: int = 3,
        censor_after_s: float = (c.DEFAULT_LABEL_DELAY_DAYS + 7) * c.SECONDS_PER_DAY,
    ) -> None:
        self.metrics = metrics or QualityMetrics()
        self.max_pending, self.ap_window = max_pending, ap_window
        self.max_versions, self.censor_after_s = max_versions, censor_after_s
        self.pending: OrderedDict[str, Decided] = OrderedDict()
        # version -> (score, fraud) of its most recent labelled decisions.
        self.recent: dict[str, deque[tuple[float, bool]]] = {}
        self.versions: list[str] = []  # oldest first
        self.unmatched = 0

    def observe(
        self,
        version: int | str,
        inputs: Mapping[str, Sequence[float]],
        scores: Sequence[float],
        decisions: Sequence[str],
        event_times: Sequence[int],
        transaction_ids: Sequence[str],
    ) -> None:
        """Remember one decided batch (``inputs`` holds the amount and ``SEGMENT_INPUTS``)."""
        missing = [n for n in (c.AMOUNT, *SEGMENT_INPUTS) if n not in inputs]
        if missing:
            raise ValueError(f"quality: the batch's inputs lack {', '.join(missing)}")
        v = str(version)
        self._ensure_version(v)
        amounts = inputs[c.AMOUNT]
        bands = bands_of(amounts, event_times, *(inputs[n] for n in SEGMENT_INPUTS))
        rows = zip(scores, decisions, amounts, event_times, bands, strict=True)
        self.pending.update(
            (str(tid), Decided(v, float(s), d, float(a), int(t), b))
            for tid, (s, d, a, t, b) in zip(transaction_ids, rows, strict=True)
        )
        self._censor(int(max(event_times)) if len(event_times) else None)

    def add_labels(self, labels: Iterable[Any] | Mapping[str, int]) -> int:
        """Join labels (as ``monitoring.checks.labels.LiveLabels.add_labels`` takes them) to
        the remembered decisions; returns how many matched. A label for a decision never seen,
        evicted or already judged counts in ``unmatched``."""
        items: Iterable[Any] = labels.items() if isinstance(labels, Mapping) else labels
        counts: dict[tuple[str, ...], list[float]] = {}
        touched: set[str] = set()
        matched = 0
        for item in items:
            if hasattr(item, "transaction_id"):
                tid, fraud = item.transaction_id, item.is_fraud
            else:
                tid, fraud = item
            decided = self.pending.pop(str(tid), None)
            if decided is None:
                self.unmatched += 1
                continue
            matched += 1
            is_fraud = bool(int(fraud))
            truth = TRUTHS[is_fraud]
            for segment, band in zip(SEGMENTS, decided.bands, strict=True):
                key = (decided.version, segment, band, decided.decision, truth)
                acc = counts.setdefault(key, [0, 0.0])
                acc[0] += 1
                acc[1] += decided.amount
            window = self.recent.get(decided.version)
            if window is not None:
                window.append((decided.score, is_fraud))
                touched.add(decided.version)
        m = self.metrics
        for key, (n, amount) in counts.items():
            if key[0] in self.recent:  # a forgotten version's labels export nothing
                m.labelled.labels(*key).inc(n)
                m.labelled_amount.labels(*key).inc(amount)
        for version in touched:
            window = self.recent[version]
            m.window_labels.labels(version).set(len(window))
            m.average_precision.labels(version).set(
                average_precision([s for s, _ in window], [f for _, f in window])
            )
        return matched

    # -- bookkeeping ------------------------------------------------------------------------------
    def _ensure_version(self, version: str) -> None:
        if version in self.recent:
            return
        self.recent[version] = deque(maxlen=self.ap_window)
        self.versions.append(version)
        m = self.metrics
        # Every series at 0 from the version's first decision, so increase() sees the first label.
        for key in _keys():
            m.labelled.labels(version, *key)
            m.labelled_amount.labels(version, *key)
        for decision in DECISIONS:
            m.unlabelled.labels(version, decision)
        m.average_precision.labels(version).set(math.nan)
        m.window_labels.labels(version).set(0)
        while len(self.versions) > self.max_versions:
            old = self.versions.pop(0)
            del self.recent[old]
            m.forget_version(old, _keys())

    def _censor(self, now: int | None) -> None:
        """Count and drop decisions whose label is overdue, and the oldest beyond max_pending."""
        pending, m = self.pending, self.metrics
        while pending:
            tid, decided = next(iter(pending.items()))
            overdue = now is not None and decided.event_time < now - self.censor_after_s
            if not overdue and len(pending) <= self.max_pending:
                break
            del pending[tid]
            if decided.version in self.recent:
                m.unlabelled.labels(decided.version, decided.decision).inc()


def _keys() -> list[tuple[str, str, str, str]]:
    return [
        (segment, band, decision, truth)
        for segment, bands in SEGMENTS.items()
        for band in bands
        for decision in DECISIONS
        for truth in TRUTHS
    ]
