"""Automatic promotion and rollback of the canary, driven by the consumer's shadow scoring.

``CanaryController`` is the shadow observer of streaming.shadow: it keeps one
``PromotionPolicy`` (monitoring.promotion) for the canary version being shadow-scored, feeds it
every shadow batch and every label the consumer reads, and once the policy reaches a verdict
applies it through serving.rollout: ``Rollout.promote`` (the canary becomes stable, the old
stable is unloaded) or ``Rollout.rollback`` (the canary is unloaded). Every step is logged,
counted (``RolloutMetrics``) and returned as a drift-events message (``event: rollout``).

**One decider.** With several consumer replicas, each judges the shadow batches of its own
partitions (customers are hashed to partitions, so each sees an unbiased sample), but only the
replica that owns partition 0 of the transactions topic (``StreamConsumer.rollout_decider``)
sends the rollout events and edits the model config. Kafka's group protocol assigns a partition
to one member at a time, on Apache Kafka as on the embedded broker and with or without
Kubernetes, so no lease or extra dependency is needed; when partition 0 moves, its new owner
decides from then on. The edit itself locks the config file and refuses to promote or roll back
a canary that is no longer there, so a replica that lost partition 0 while applying a verdict
cannot apply it twice.

Applying a verdict waits for the model server (minutes at most); it runs on the shadow worker's
thread, never on the consumer's, and without the lock that ``add_labels`` takes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from monitoring.loop import DRIFT_REASON
from monitoring.metrics import RolloutMetrics
from monitoring.promotion import PROMOTE, PromotionConfig, PromotionPolicy, Verdict, json_figures
from serving.rollout import RolloutError
from streaming import messages as m
from streaming.shadow import ShadowBatch

log = logging.getLogger(__name__)

EVENT = "rollout"  # the ``event`` of these drift-events messages (drift checks send "drift")
# Steps (the ``kind`` of a rollout event and the ``step`` label of fraud_rollout_steps_total).
SHADOW_STARTED = "shadow_started"
DRIFT_PATH = "drift_fast_path"  # the canary turned out to be a drift-triggered retrain's
VERDICT = "verdict"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
APPLY_FAILED = "apply_failed"
CANARY_GONE = "canary_gone"
STEPS = (SHADOW_STARTED, DRIFT_PATH, VERDICT, PROMOTED, ROLLED_BACK, APPLY_FAILED, CANARY_GONE)

Event = tuple[str, dict[str, Any]]


class CanaryController:
    """Judges the canary from shadow batches and, on the decider, applies the verdict.

    ``rollout``: a ``serving.rollout.Rollout`` on the served model's config file (None: judge
    and report only). ``is_decider``: whether this replica decides now. ``drift_triggered``:
    whether a version was pushed by a drift-triggered retrain (the policy's fast path).
    """

    def __init__(
        self,
        config: PromotionConfig,
        model_name: str,
        rollout: Any | None,
        metrics: RolloutMetrics | None = None,
        is_decider: Callable[[], bool] = lambda: True,
        drift_triggered: Callable[[int], bool] = lambda version: False,
        retry_s: float = 30.0,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.rollout = rollout
        self.metrics = metrics or RolloutMetrics()
        self.is_decider = is_decider
        self.drift_triggered = drift_triggered
        self.retry_s = retry_s
        self.policy: PromotionPolicy | None = None
        # Every event this controller returned, oldest first, with its wall time (epoch s).
        self.history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._applied = False
        self._retry_at = float("-inf")

    # -- ShadowObserver ------------------------------------------------------------------------
    def observe(self, batch: ShadowBatch) -> list[Event]:
        events: list[Event] = []
        with self._lock:
            if self.policy is None or self.policy.canary != batch.canary_version:
                events += self._start(batch.stable.version, batch.canary_version)
            elif not self.policy.drift_triggered and self.drift_triggered(batch.canary_version):
                # A retrain records its version once its push step, which made it the canary,
                # has returned: shadow scoring can start a moment before.
                self.policy.drift_triggered = True
                events += self._step(DRIFT_PATH, "pushed by a drift-triggered retrain", self.policy)
            assert self.policy is not None
            verdict = self.policy.update(batch)
            if verdict is not None:
                events += self._verdict(verdict)
            self.metrics.show(self.policy.figures())
        return events + self._apply_due()

    def tick(self, canary_version: int | None) -> list[Event]:
        events: list[Event] = []
        with self._lock:
            policy = self.policy
            if policy is not None and canary_version != policy.canary:
                if not self._applied:
                    events += self._step(CANARY_GONE, "the canary label moved away", policy)
                self.policy = None
                self.metrics.canary_version.set(0)
                return events
            if policy is not None and policy.verdict is None:
                verdict = policy.judge()  # labels joined since the last batch may decide it
                if verdict is not None:
                    events += self._verdict(verdict)
        return events + self._apply_due()

    def add_labels(self, labels: Sequence[Any]) -> None:
        with self._lock:
            if self.policy is not None:
                self.policy.add_labels(labels)

    # -- steps ---------------------------------------------------------------------------------
    def _start(self, stable: int, canary: int) -> list[Event]:
        drift = self.drift_triggered(canary)
        self.policy = PromotionPolicy(self.config, stable, canary, drift_triggered=drift)
        self._applied = False
        self._retry_at = float("-inf")
        self.metrics.canary_version.set(canary)
        path = "drift fast path" if drift else "standard path"
        return self._step(SHADOW_STARTED, f"shadow scoring canary {canary} ({path})", self.policy)

    def _verdict(self, verdict: Verdict) -> list[Event]:
        assert self.policy is not None
        return self._step(VERDICT, verdict.reason, self.policy, action=verdict.action)

    def _apply_due(self) -> list[Event]:
        """Apply a verdict not applied yet, on the decider; outside the lock (it waits for the
        model server)."""
        with self._lock:
            policy = self.policy
            if (
                policy is None
                or policy.verdict is None
                or self._applied
                or self.rollout is None
                or time.monotonic() < self._retry_at
                or not self.is_decider()
            ):
                return []
            verdict = policy.verdict
        try:
            if verdict.action == PROMOTE:
                self.rollout.promote()
            else:
                self.rollout.rollback()
        except (RolloutError, OSError) as err:
            with self._lock:
                self._retry_at = time.monotonic() + self.retry_s
                return self._step(
                    APPLY_FAILED,
                    f"{verdict.action} failed (retried in {self.retry_s:g} s): {err}",
                    policy,
                    action=verdict.action,
                )
        with self._lock:
            self._applied = True
            step = PROMOTED if verdict.action == PROMOTE else ROLLED_BACK
            return self._step(step, verdict.reason, policy, action=verdict.action)

    def _step(
        self, step: str, reason: str, policy: PromotionPolicy, action: str | None = None
    ) -> list[Event]:
        """Log and count a step; its drift-events message when this replica decides."""
        self.metrics.steps.labels(step).inc()
        decider = self.is_decider()
        log.log(
            logging.WARNING if step in (APPLY_FAILED, CANARY_GONE) else logging.INFO,
            "rollout %s: canary %d vs stable %d%s: %s%s",
            step,
            policy.canary,
            policy.stable,
            f" ({action})" if action else "",
            reason,
            "" if decider else " (not the decider: the owner of partition 0 acts)",
        )
        if not decider:
            return []
        message = {
            "event": EVENT,
            "kind": step,
            "model_name": self.model_name,
            "stable_version": policy.stable,
            "canary_version": policy.canary,
            "action": action,
            "reason": reason,
            "drift_triggered": policy.drift_triggered,
            "figures": json_figures(policy.figures()),
            "detected_at": m.now_iso(),
        }
        self.history.append({**message, "at_unix": time.time()})
        # Keyed by model: one model's rollout events stay in order on one partition.
        return [(self.model_name, message)]


def drift_pushed(trigger: Any) -> Callable[[int], bool]:
    """Whether a version was pushed by one of ``trigger``'s (monitoring.retrain.RetrainTrigger)
    drift-triggered runs, as its run history records."""
    from monitoring.retrain_history import PUSHED

    def pushed_by_drift(version: int) -> bool:
        return any(
            r.get("status") == PUSHED
            and r.get("version") == version
            and str(r.get("reason", "")).startswith(DRIFT_REASON)
            for r in trigger.history()
        )

    return pushed_by_drift


def shadow_scoring(
    config: Any,
    serving_url: str,
    thresholds: Any,
    metrics: Any,
    policy: PromotionConfig,
    rollout: Any | None,
    drift_triggered: Callable[[int], bool] = lambda version: False,
    timeout_s: float = 1.0,
    max_queued: int = 2,
    protocol: str = "rest",
) -> tuple[Any, CanaryController]:
    """A consumer's shadow scorer (streaming.shadow.ShadowScorer, for ``StreamConsumer(...,
    shadow=)``) with its controller, on the consumer's metrics registry; ``serving_url`` and
    ``protocol`` as for the consumer's own client. Once the consumer exists, set ``controller.is_decider = consumer.rollout_decider.is_set``."""
    from streaming.shadow import ShadowScorer, build_canary_client

    controller = CanaryController(
        policy,
        config.model_name,
        rollout,
        RolloutMetrics(metrics.registry),
        drift_triggered=drift_triggered,
    )
    client = build_canary_client(serving_url, config.model_name, timeout_s, protocol)
    shadow = ShadowScorer(config, client, thresholds, metrics, controller, max_queued=max_queued)
    return shadow, controller
