"""Live precision and recall of the alerts, from labels that arrive days after the decisions.

``LiveLabels`` remembers each decision (alerted or not) by transaction id (``update``), joins
the delayed labels to them (``add_labels``), and keeps the precision and recall over the most
recent ``label_window`` joined labels. Each decision is judged once: a repeated label, or one
for a decision never seen or evicted (the oldest go first beyond ``max_pending``), is counted in
``unmatched`` and otherwise ignored.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> labels = LiveLabels(max_pending=1_000, label_window=100)
>>> ids = [f"tx{i}" for i in range(200)]
>>> alerted = rng.random(200) < 0.1
>>> labels.update(ids, alerted)
>>> fraud = (alerted & (rng.random(200) < 0.6)) | (rng.random(200) < 0.02)
>>> labels.add_labels(zip(ids, fraud.astype(int).tolist()))
200
>>> labels.add_labels({"tx0": 1, "tx999": 0})  # already judged, never seen
0
>>> round(labels.precision, 3), round(labels.recall, 3), labels.unmatched, len(labels.pending)
(0.545, 0.75, 2, 0)
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


class LiveLabels:
    """Decisions waiting for their label, and the recent labelled ones' precision and recall."""

    def __init__(self, max_pending: int, label_window: int) -> None:
        self.max_pending, self.label_window = max_pending, label_window
        # transaction id -> alerted (review/block); insertion order = eviction order.
        self.pending: OrderedDict[str, bool] = OrderedDict()
        # (alerted, fraud) of the most recent joined labels, oldest first.
        self.matched: deque[tuple[bool, bool]] = deque()
        # Sums over ``matched``: alerted frauds, alerts, frauds.
        self.tp = self.alerted = self.frauds = 0
        self.unmatched = 0

    @classmethod
    def restored(
        cls,
        max_pending: int,
        label_window: int,
        pending: Mapping[Any, Any],
        matched: Iterable[Sequence[Any]],
        counts: tuple[int, int, int, int],
    ) -> LiveLabels:
        """Carry on from saved ``pending``, ``matched`` and ``counts`` (tp, alerted, frauds,
        unmatched), as the attributes of the same names held them."""
        labels = cls(max_pending, label_window)
        labels.pending = OrderedDict((str(k), bool(v)) for k, v in pending.items())
        labels.matched = deque((bool(a), bool(f)) for a, f in matched)
        labels.tp, labels.alerted, labels.frauds, labels.unmatched = counts
        return labels

    def update(self, transaction_ids: Sequence[str], alerted: np.ndarray) -> None:
        """Remember one batch's decisions: an id and an alerted flag per transaction."""
        pending = self.pending
        # One C-level update per batch (this runs for every transaction). A transaction decided
        # again (at-least-once) keeps its place in the eviction order and takes the latest flag.
        pending.update(zip(map(str, transaction_ids), alerted.tolist(), strict=True))
        while len(pending) > self.max_pending:
            pending.popitem(last=False)

    def add_labels(self, labels: Iterable[Any] | Mapping[str, int]) -> int:
        """Join labels to the remembered decisions; returns how many matched.

        ``labels``: a mapping ``transaction_id -> is_fraud``, ``(transaction_id, is_fraud)``
        pairs, or objects with ``transaction_id`` and ``is_fraud`` attributes (the consumer's
        ``messages.Label``).
        """
        items: Iterable[Any] = labels.items() if isinstance(labels, Mapping) else labels
        matched = 0
        window = self.matched
        for item in items:
            # Attributes first: the consumer's Label is a NamedTuple, i.e. also a tuple.
            if hasattr(item, "transaction_id"):
                tid, fraud = item.transaction_id, item.is_fraud
            else:
                tid, fraud = item
            alerted = self.pending.pop(str(tid), None)
            if alerted is None:
                self.unmatched += 1
                continue
            is_fraud = bool(int(fraud))
            window.append((alerted, is_fraud))
            self.tp += alerted and is_fraud
            self.alerted += alerted
            self.frauds += is_fraud
            if len(window) > self.label_window:
                old_alerted, old_fraud = window.popleft()
                self.tp -= old_alerted and old_fraud
                self.alerted -= old_alerted
                self.frauds -= old_fraud
            matched += 1
        return matched

    @property
    def precision(self) -> float:
        """Frauds among the labelled alerts of the recent label window (NaN: no alert yet)."""
        return self.tp / self.alerted if self.alerted else math.nan

    @property
    def recall(self) -> float:
        """Alerted share of the labelled frauds of the recent label window (NaN: no fraud yet)."""
        return self.tp / self.frauds if self.frauds else math.nan
