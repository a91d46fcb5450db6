"""The consumer's produce stage: decisions, alerts, dead letters and drift events out, and the
wait for the broker's acknowledgement of every one of them before the batch may be committed.

A dead letter the broker refuses for the record itself (too large, invalid) is replaced by one
without the original bytes (``Output.await_acks``), so no single message can stop the consumer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from core import contract as c
from streaming import messages as m
from streaming.consumer_config import ConsumerConfig, ConsumerSummary
from streaming.fetch_stage import Entry
from streaming.metrics import StreamMetrics
from streaming.scoring import Scored

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _DeadLetterSend:
    """A dead letter sent for ``entry``: the send's future, or the refusal ``send()`` raised."""

    entry: Entry
    future: Any = None
    error: BaseException | None = None

    def refusal(self) -> BaseException | None:
        """Why the record itself was refused (``_refused_for_itself``), once it is done."""
        if self.error is not None:
            return self.error
        fut = self.future
        if fut.is_done and fut.failed() and _refused_for_itself(fut.exception):
            return fut.exception
        return None


def _refused_for_itself(err: BaseException) -> bool:
    """Whether a produce failed because of the record it sent (too large for the client's
    max_request_size or the broker's max.message.bytes, rejected by broker-side validation):
    sending the same record again can never succeed, a smaller one can."""
    from kafka import errors

    return isinstance(
        err,
        errors.MessageSizeTooLargeError
        | errors.RecordListTooLargeError
        | errors.InvalidRecordError,
    )


class Output:
    """Sends a batch's outputs with ``producer`` and waits for their acknowledgements.

    Keeps nothing between batches but the decision, alert and dead-letter counts it adds to
    ``metrics`` and ``summary``. Guarantees: ``await_acks`` returns only when every output sent
    for the batch is acknowledged (a dead letter refused for itself by its bare replacement),
    and raises otherwise, so the loop commits nothing whose outputs are not out.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        producer: Any,
        metrics: StreamMetrics,
        summary: ConsumerSummary,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.summary = summary
        self._producer = producer

    def produce(
        self,
        entries: list[Entry],
        features: list[dict[str, float]],
        scored: Scored | None,
        dead: list[Entry],
        correction: bool = False,
    ) -> list[Any]:
        """Send the decisions of ``entries`` (scored, or the fallback when ``scored`` is None;
        ``correction``: re-scores of fallback decisions), their alerts, and the dead letters."""
        cfg = self.config
        topics = cfg.topics
        producer = self._producer
        futures: list[Any] = []
        f = m.DecisionFields
        if entries:
            fallback = scored is None
            if scored is None:
                scores: list[float | None] = [None] * len(entries)
                thresholds = None
                scoring_ms = None
                version = None
            else:
                scores = list(scored.scores)
                th = scored.thresholds
                thresholds = {c.REVIEW: th.review, c.BLOCK: th.block}
                scoring_ms = round(scored.latency_s * 1000, 3)
                version = scored.version
            now_ms = time.time() * 1000
            decided_at = m.now_iso()
            # Per-batch constants out of the per-message loop (at ~10k messages/s each lookup
            # shows in a profile).
            model_name = cfg.model_name
            decisions_topic, alerts_topic, approve = topics.decisions, topics.alerts, c.APPROVE
            counts = dict.fromkeys(c.DECISIONS, 0)
            for e, feats, score in zip(entries, features, scores, strict=True):
                row = e.row
                assert row is not None
                decision = cfg.fallback_decision if score is None else th.decide(score)
                counts[decision] += 1
                payload = {
                    c.TRANSACTION_ID: row[c.TRANSACTION_ID],
                    c.TIMESTAMP: row[c.TIMESTAMP],
                    c.CUSTOMER_ID: row[c.CUSTOMER_ID],
                    c.TERMINAL_ID: row[c.TERMINAL_ID],
                    c.AMOUNT: row[c.AMOUNT],
                    f.SCORE: score,
                    f.DECISION: decision,
                    f.MODEL_NAME: model_name,
                    f.MODEL_VERSION: version,
                    f.THRESHOLDS: thresholds,
                    f.SCORING_MS: scoring_ms,
                    f.END_TO_END_MS: round(now_ms - e.timestamp_ms, 3),
                    f.DECIDED_AT: decided_at,
                    f.FALLBACK: fallback,
                    f.CORRECTION: correction,
                }
                if cfg.include_features:
                    payload[f.FEATURES] = feats
                value = m.encode(payload)
                # Partitioned by the producer's default partitioner (murmur2 of the key).
                key = row[c.TRANSACTION_ID].encode()
                futures.append(producer.send(decisions_topic, key=key, value=value))
                if decision != approve:
                    futures.append(producer.send(alerts_topic, key=key, value=value))
            self._count_decisions(scored, counts, len(entries), correction)
        for e in dead:
            assert e.rejected is not None
            futures.append(self._send_dead_letter(e, e.rejected, cfg.dead_letter_max_payload_bytes))
            self.metrics.dead_lettered.labels(e.rejected.kind).inc()
        self.summary.dead_lettered += len(dead)
        return futures

    def _count_decisions(
        self, scored: Scored | None, counts: dict[str, int], n: int, correction: bool
    ) -> None:
        if scored is not None:
            finite = [s for s in scored.scores if math.isfinite(s)]
            if len(finite) < n:
                self.metrics.nonfinite_scores.inc(n - len(finite))
                log.error(
                    "model version %d answered %d non-finite score(s): decided %s (fail-safe)",
                    scored.version,
                    n - len(finite),
                    c.FAILSAFE_DECISION,
                )
            self.metrics.score.observe_many(finite)
        else:
            self.metrics.fallback_decisions.inc(n)
        if correction:
            self.metrics.corrections.inc(n)
            return  # the transactions were counted as decided with their fallback decision
        for decision, k in counts.items():
            if k:
                self.metrics.decisions.labels(decision).inc(k)
        self.metrics.decided.inc(n)
        self.summary.decided += n
        self.summary.alerts += counts[c.REVIEW] + counts[c.BLOCK]

    def _send_dead_letter(
        self, e: Entry, rejected: m.Rejected, max_payload_bytes: int
    ) -> _DeadLetterSend:
        """Send ``e``'s dead letter; a refusal of this very record (see ``_refused_for_itself``)
        raised by ``send()`` is kept for ``await_acks``, like one that fails the future."""
        topics = self.config.topics
        value = m.dead_letter(
            rejected,
            topic=topics.transactions,
            partition=e.partition,
            offset=e.offset,
            timestamp_ms=e.timestamp_ms,
            key=e.key,
            value=e.value,
            group_id=self.config.group_id,
            max_payload_bytes=max_payload_bytes,
        )
        # Keyed like the original (one customer's dead letters stay in order) unless that key
        # is what a payload cap cuts.
        key = e.key if e.key is None or len(e.key) <= max_payload_bytes else None
        try:
            return _DeadLetterSend(e, self._producer.send(topics.dead_letter, key=key, value=value))
        except Exception as err:
            if not _refused_for_itself(err):
                raise
            return _DeadLetterSend(e, error=err)

    def await_acks(self, futures: list[Any]) -> None:
        """Wait for every output of the batch to be acknowledged; raise if one is not, except
        a dead letter refused for itself (too large, invalid record): that one is replaced by
        a dead letter without the original bytes, so one message can never stop the consumer.
        A failure that is not about the record (broker unreachable, topic missing, not
        authorised) raises: nothing of the batch is committed, the restart decides it again."""
        if not futures:
            return
        self._producer.flush(timeout=60)
        outputs: list[Any] = []
        replaced = False
        for fut in futures:
            if isinstance(fut, _DeadLetterSend):
                refusal = fut.refusal()
                replaced |= refusal is not None
                fut = fut.future if refusal is None else self._send_bare_dead_letter(fut, refusal)
            outputs.append(fut)
        if replaced:
            self._producer.flush(timeout=60)
        failed = [fut for fut in outputs if not fut.is_done or fut.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "no answer within 60 s"
            # Not committing is not enough: the state already moved past this batch. Stop; the
            # restart restores the snapshot and decides the batch again (at least once).
            raise RuntimeError(
                f"{len(failed)} of {len(futures)} output messages not acknowledged by "
                f"{self.config.bootstrap_servers}: {first}"
            )

    def _send_bare_dead_letter(self, refused: _DeadLetterSend, refusal: BaseException) -> Any:
        """Send a dead letter without the original key and value (their sizes and sha256 stay)
        in place of ``refused``; returns its future."""
        e = refused.entry
        assert e.rejected is not None
        log.error(
            "dead letter of %s[%d]@%d refused (%s: %s); sending it without the original bytes",
            self.config.topics.transactions,
            e.partition,
            e.offset,
            type(refusal).__name__,
            refusal,
        )
        bare = m.Rejected(
            e.rejected.kind,
            f"original bytes left out (the dead letter with them was refused: "
            f"{type(refusal).__name__}); {e.rejected.reason}",
        )
        sent = self._send_dead_letter(e, bare, max_payload_bytes=0)
        if sent.error is not None:
            raise RuntimeError(
                f"dead letter of {self.config.topics.transactions}[{e.partition}]@{e.offset} "
                f"refused even without the original bytes: {sent.error}"
            ) from sent.error
        return sent.future

    def send_drift_events(self, events: list[Any]) -> list[Any]:
        """Send drift monitor events (monitoring.loop) to the drift events topic; their futures."""
        topic = self.config.topics.drift_events
        return [
            self._producer.send(topic, key=ev.kind.encode(), value=m.encode(ev.to_message()))
            for ev in events
        ]
