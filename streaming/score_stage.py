"""The consumer's score stage: one model call per batch, held while the model server is down,
fallback decisions at the decision deadline, and the fallback backlog's re-scores.

``ScoreStage.score`` answers a batch with an ``Outcome``: scored (rows the model refuses become
dead letters), or, once ``decision_deadline_s`` has passed, marked for ``fallback_decision``.
The deadline bounds the model calls themselves, not only the waits between them: a server that
takes a request and never answers costs a batch the deadline, not the client's timeouts and
retries.
Fallback-decided transactions wait in the ``FallbackBacklog`` until ``ScoreStage.rescore_due``
scores them; the loop sends those scores as corrections.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core import contract as c
from streaming import messages as m
from streaming.consumer_config import ConsumerConfig
from streaming.fetch_stage import Entry
from streaming.health import ConsumerHealth
from streaming.metrics import StreamMetrics
from streaming.scoring import Scored, Scorer, ScoringUnavailable

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the model boundary made of a batch's entries to score."""

    entries: list[Entry]  # to decide, in order
    features: list[dict[str, float]]
    scored: Scored | None  # None: the decision deadline passed, ``fallback_decision`` applies
    refused: list[Entry] = field(default_factory=list)  # the model refused them: dead letters

    @property
    def fallback(self) -> bool:
        return self.scored is None


@dataclass
class Rescore:
    """A re-score of the backlog's oldest entries: its outcome, and how many entries of each
    partition it took (for ``FallbackBacklog.release`` once its corrections are acknowledged)."""

    outcome: Outcome
    taken: dict[int, int]


class FallbackBacklog:
    """Fallback-decided transactions awaiting their re-score, per partition in offset order.

    Until a partition's backlog is re-scored, its committed offset stays at its oldest entry
    (``oldest_offset``) and the partition is not snapshotted (``holds``): a restart, or the
    partition's next owner, decides them again from there, so a fallback decision is never left
    without a score. Keeps ``size`` and the ``fallback_backlog`` gauge equal to the entries held.
    """

    def __init__(self, metrics: StreamMetrics) -> None:
        self.metrics = metrics
        self._items: dict[int, list[tuple[Entry, dict[str, float]]]] = {}
        self.size = 0

    def holds(self, partition: int) -> bool:
        return partition in self._items

    def partitions(self) -> list[int]:
        return list(self._items)

    def oldest_offset(self, partition: int) -> int | None:
        """The offset of ``partition``'s oldest entry awaiting its re-score, or None."""
        items = self._items.get(partition)
        return items[0][0].offset if items else None

    def keep(self, outcome: Outcome) -> None:
        """Keep a fallback outcome's transactions (with their features) for their re-score."""
        for e, feats in zip(outcome.entries, outcome.features, strict=True):
            self._items.setdefault(e.partition, []).append((e, feats))
        self.size += len(outcome.entries)
        self.metrics.fallback_backlog.set(self.size)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the backlog of partitions this consumer no longer owns (their next owner
        re-decides from the committed offset)."""
        for p in list(partitions):
            self.size -= len(self._items.pop(p, ()))
        self.metrics.fallback_backlog.set(self.size)

    def oldest(self, limit: int) -> tuple[list[Entry], list[dict[str, float]], dict[int, int]]:
        """Up to ``limit`` entries, oldest first per partition, with their features and how many
        each partition gave; they stay kept until ``release``."""
        taken: dict[int, int] = {}
        entries: list[Entry] = []
        features: list[dict[str, float]] = []
        for p, items in self._items.items():
            room = limit - len(entries)
            if room <= 0:
                break
            for e, feats in items[:room]:
                entries.append(e)
                features.append(feats)
            taken[p] = min(room, len(items))
        return entries, features, taken

    def release(self, taken: dict[int, int]) -> None:
        """Forget the entries ``oldest`` returned as ``taken``: their re-scores are out."""
        for p, n in taken.items():
            del self._items[p][:n]
            if not self._items[p]:
                del self._items[p]
        self.size -= sum(taken.values())
        self.metrics.fallback_backlog.set(self.size)


def model_inputs(entries: list[Entry], features: list[dict[str, float]]) -> dict[str, list[Any]]:
    """The :predict inputs of ``entries`` (raw fields) with their computed ``features``."""
    inputs: dict[str, list[Any]] = {}
    for name in c.MODEL_INPUTS:
        if name in c.RAW_MODEL_INPUTS:
            inputs[name] = [e.row[name] for e in entries]  # type: ignore[index]
        else:
            inputs[name] = [f[name] for f in features]
    return inputs


class ScoreStage:
    """Calls the model server for a batch or for the backlog's re-score.

    Keeps when the current outage started (for the log, the lag bound and readiness), when the
    backlog is next re-scored with its backoff, and which model versions were reported for a
    label delay other than the consumer's. Guarantees: a batch is never dropped for an
    unavailable server: it is held (``wait``, which keeps the group membership) and retried with
    backoff until the server answers, the decision deadline passes, or ``wait`` gives up.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        scorer: Scorer,
        metrics: StreamMetrics,
        health: ConsumerHealth,
        backlog: FallbackBacklog,
        wait: Callable[[float], bool],
    ) -> None:
        self.config = config
        self.scorer = scorer
        self.metrics = metrics
        self.health = health
        self.backlog = backlog
        # Sleeps the given seconds keeping the group membership; False: give up the batch.
        self._wait = wait
        # When the model server was first found unavailable in the current outage (None: up).
        self._hold_started: float | None = None
        self._last_unavailable_log = float("-inf")
        self._rescore_at = 0.0
        self._rescore_delay = config.retry_initial_s
        self._warned_delay: set[int] = set()

    def score(self, entries: list[Entry], features: list[dict[str, float]]) -> Outcome | None:
        """Score the batch: rows the model refuses become dead letters, an unavailable server is
        retried with backoff until it answers or the decision deadline passes (then the batch
        is decided with the fallback and kept for its re-score); None: stopping or rebalanced,
        the batch will be read again."""
        inputs = self._model_inputs(entries, features)
        cfg = self.config
        delay = cfg.retry_initial_s
        held_since = time.monotonic()
        deadline = None
        if cfg.decision_deadline_s is not None and self._backlog_has_room(len(entries)):
            deadline = held_since + cfg.decision_deadline_s
        try:
            while True:
                try:
                    scored, kept, refused = self.scorer.score_isolating(
                        inputs, len(entries), deadline
                    )
                except ScoringUnavailable as err:
                    held_s = time.monotonic() - held_since
                    self._note_unavailable(err, len(entries), held_s)
                    if self._may_fall_back(held_s, len(entries)):
                        return Outcome(entries, features, None)
                    if not self._wait(delay):
                        return None
                    delay = min(delay * 2, cfg.retry_max_s)
                    continue
                self._scoring_recovered()
                return self._outcome(entries, features, scored, kept, refused)
        finally:
            self.metrics.held_seconds.set(0)

    def rescore_due(self) -> Rescore | None:
        """Re-score up to a batch of the backlog, oldest first, if it is due; None when there is
        nothing to re-score or the model server is still down (asked again with backoff)."""
        if not self.backlog.size or time.monotonic() < self._rescore_at:
            return None
        cfg = self.config
        entries, features, taken = self.backlog.oldest(cfg.batch_size)
        # A re-score runs on the loop: it may not keep new batches from their decisions for
        # longer than a decision may wait.
        deadline = None
        if cfg.decision_deadline_s is not None:
            deadline = time.monotonic() + cfg.decision_deadline_s
        try:
            scored, kept, refused = self.scorer.score_isolating(
                self._model_inputs(entries, features), len(entries), deadline
            )
        except ScoringUnavailable as err:
            self._note_unavailable(err, len(entries), 0.0)
            self._rescore_at = time.monotonic() + self._rescore_delay
            self._rescore_delay = min(self._rescore_delay * 2, cfg.retry_max_s)
            return None
        self._rescore_delay = cfg.retry_initial_s
        self._scoring_recovered()
        return Rescore(self._outcome(entries, features, scored, kept, refused), taken)

    def _outcome(
        self,
        entries: list[Entry],
        features: list[dict[str, float]],
        scored: Scored | None,
        kept: list[int],
        refused: dict[int, str],
    ) -> Outcome:
        if scored is not None:
            self.metrics.scoring_latency.observe(scored.latency_s)
            self.metrics.model_version.labels(self.config.model_name).set(scored.version)
            self._check_delay(scored)
        dead = []
        for i, why in sorted(refused.items()):
            entry = entries[i]
            entry.rejected = m.Rejected(m.MODEL_REJECTED, why)
            dead.append(entry)
        if dead:
            log.warning(
                "the model refused %d transaction(s), dead-lettered; first: %s",
                len(dead),
                dead[0].rejected.reason,  # type: ignore[union-attr]
            )
        if len(kept) == len(entries):
            return Outcome(entries, features, scored, dead)
        return Outcome([entries[i] for i in kept], [features[i] for i in kept], scored, dead)

    def _note_unavailable(self, err: Exception, rows: int, held_s: float) -> None:
        """Count and report a failed scoring attempt; an outage longer than the lag bound turns
        readiness red until the server answers again."""
        now = time.monotonic()
        self.metrics.scoring_failures.inc()
        self.metrics.held_seconds.set(held_s)
        if self._hold_started is None:
            self._hold_started = now - held_s
        if now - self._last_unavailable_log >= 10:
            self._last_unavailable_log = now
            log.warning(
                "scoring unavailable for %.1f s; %d transactions held, %d awaiting a re-score "
                "after a fallback decision: %s",
                now - self._hold_started,
                rows,
                self.backlog.size,
                err,
            )
        outage_s = now - self._hold_started
        if outage_s > self.config.lag_bound_s and self.health.scoring_ok:
            self.metrics.hold_bound_exceeded.inc()
            self.health.scoring_failed(
                f"model server unavailable for {outage_s:.0f} s, over the "
                f"{self.config.lag_bound_s:.0f} s lag bound: {err}"
            )
            log.error(
                "model server unavailable for %.0f s, over the %.0f s lag bound: not ready; "
                "still retrying (nothing is dropped)",
                outage_s,
                self.config.lag_bound_s,
            )

    def _backlog_has_room(self, rows: int) -> bool:
        # Without room, hold instead: the backlog keeps what it has, nothing is dropped.
        return self.backlog.size + rows <= self.config.max_fallback_backlog

    def _may_fall_back(self, held_s: float, rows: int) -> bool:
        deadline = self.config.decision_deadline_s
        if deadline is None or not self._backlog_has_room(rows):
            return False
        # While earlier transactions await their re-score the server is known to be down: a
        # new batch that fails once falls back at once instead of waiting out the deadline.
        return held_s >= deadline or self.backlog.size > 0

    def _scoring_recovered(self) -> None:
        if self._hold_started is not None:
            log.info(
                "model server answers again after %.1f s", time.monotonic() - self._hold_started
            )
        self._hold_started = None
        self.health.scoring_recovered()

    def _model_inputs(
        self, entries: list[Entry], features: list[dict[str, float]]
    ) -> dict[str, list[Any]]:
        return model_inputs(entries, features)

    def _check_delay(self, scored: Scored) -> None:
        model_delay = scored.thresholds.label_delay_days
        if (
            model_delay is not None
            and model_delay != self.config.label_delay_days
            and scored.version not in self._warned_delay
        ):
            self._warned_delay.add(scored.version)
            log.error(
                "model version %d was trained with a label delay of %d days but this consumer "
                "computes terminal features with %d: its scores are off; restart with "
                "--label-delay-days %d",
                scored.version,
                model_delay,
                self.config.label_delay_days,
                model_delay,
            )
