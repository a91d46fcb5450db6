"""The promotion rule (monitoring.promotion) on seeded shadow streams: each test pins the batch
at which the verdict falls and its exact reason, so any change of the rule shows here."""

from __future__ import annotations

import doctest
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

import monitoring.promotion
from core import contract as c
from monitoring.promotion import PROMOTE, ROLLBACK, PromotionConfig, PromotionPolicy
from streaming.scoring import ModelThresholds, Scored
from streaming.shadow import ShadowBatch

STABLE, CANARY = 1, 2
SIZE = 100  # transactions per batch
HOUR = 3600


@dataclass(frozen=True)
class Step:
    batch: ShadowBatch
    labels: list[tuple[str, int]]


def stream(
    seed: int,
    canary: str = "same",
    fail: frozenset[int] = frozenset(),
    fraud_rate: float = 0.05,
) -> Iterator[Step]:
    """One batch per event hour. Stable scores separate frauds well; the canary's are the same
    (``same``), blind to fraud (``blind``), shifted up by 0.5 (``alerting``), stable's with 2 %
    noise (``noisy``) or doubled (``doubled``); it fails at the batches in ``fail``."""
    rng = np.random.default_rng(seed)
    th = {v: ModelThresholds(v, 0.5, 0.9, c.DEFAULT_LABEL_DELAY_DAYS) for v in (STABLE, CANARY)}
    i = 0
    while True:
        fraud = rng.random(SIZE) < fraud_rate
        stable = np.where(fraud, rng.beta(6, 2, SIZE), rng.beta(1, 25, SIZE))
        shadow = {
            "same": stable,
            "blind": rng.beta(1, 25, SIZE),
            "alerting": np.minimum(stable + 0.5, 1.0),
            "noisy": np.clip(stable * rng.normal(1, 0.02, SIZE), 0, 1),
            "doubled": np.minimum(stable * 2, 1.0),
        }[canary]
        ids = [f"s{seed}-{i}-{j}" for j in range(SIZE)]
        answer = None if i in fail else Scored(shadow.tolist(), th[CANARY], 0.01)
        batch = ShadowBatch(
            ids, [i * HOUR] * SIZE, Scored(stable.tolist(), th[STABLE], 0.01), CANARY, answer
        )
        yield Step(batch, list(zip(ids, fraud.astype(int).tolist(), strict=True)))
        i += 1


def first_verdict(
    policy: PromotionPolicy, steps: Iterator[Step], label_lag: int | None = 24, limit: int = 2000
) -> tuple[int, str, str]:
    """Feed ``steps`` (each batch's labels arrive ``label_lag`` batches later; None: never)
    until a verdict: (batch index, action, reason)."""
    late: list[list[tuple[str, int]]] = []
    for i, step in zip(range(limit), steps, strict=False):
        late.append(step.labels)
        if label_lag is not None and i >= label_lag:
            policy.add_labels(late[i - label_lag])
        verdict = policy.update(step.batch)
        if verdict is not None:
            assert policy.update(step.batch) is None, "a verdict is final"
            return i, verdict.action, verdict.reason
    raise AssertionError(f"no verdict within {limit} batches: {policy.figures()}")


def test_the_docstring_example_holds() -> None:
    result = doctest.testmod(monitoring.promotion)
    assert result.attempted > 0 and result.failed == 0


def test_consecutive_errors_roll_back_at_once() -> None:
    policy = PromotionPolicy(PromotionConfig(), STABLE, CANARY)
    got = first_verdict(policy, stream(1, fail=frozenset(range(3, 8))))
    assert got == (7, ROLLBACK, "the canary failed 5 shadow batches in a row")


def test_an_error_rate_over_the_limit_rolls_back() -> None:
    policy = PromotionPolicy(PromotionConfig(), STABLE, CANARY)
    got = first_verdict(policy, stream(2, fail=frozenset(range(0, 100, 9))))
    assert got == (19, ROLLBACK, "the canary failed 15.0% of 20 shadow batches (max 5.0%)")


def test_a_canary_over_the_alert_budget_rolls_back_before_any_label() -> None:
    policy = PromotionPolicy(PromotionConfig(), STABLE, CANARY)
    index, action, reason = first_verdict(policy, stream(3, canary="alerting"), label_lag=None)
    assert (index, action) == (49, ROLLBACK)
    assert reason == (
        "the canary would alert on 100.00% of 5000 transactions, over the 5.00% budget"
    )


def test_a_canary_blind_to_fraud_is_worse_on_the_same_labelled_transactions() -> None:
    config = PromotionConfig(max_alert_rate=1.0)
    got = first_verdict(PromotionPolicy(config, STABLE, CANARY), stream(4, canary="blind"))
    assert got == (
        29,
        ROLLBACK,
        "worse on the same 600 labelled transactions (35 frauds): recall 0.000 vs stable 0.971, "
        "precision n/a vs stable 1.000",
    )


def test_an_equal_canary_is_promoted_on_the_paired_comparison() -> None:
    got = first_verdict(PromotionPolicy(PromotionConfig(), STABLE, CANARY), stream(5))
    assert got == (
        31,
        PROMOTE,
        "no worse on the same 800 labelled transactions (32 frauds): recall 0.969 vs stable "
        "0.969, precision 1.000 vs stable 1.000",
    )


def test_a_drift_triggered_canary_takes_the_fast_path() -> None:
    policy = PromotionPolicy(PromotionConfig(), STABLE, CANARY, drift_triggered=True)
    got = first_verdict(policy, stream(6, canary="noisy"), label_lag=None)
    assert got == (
        19,
        PROMOTE,
        "drift-triggered retrain: label-free checks pass on 2000 transactions and the stable "
        "version is known to be degraded",
    )


def test_a_canary_known_as_drift_triggered_only_after_shadowing_began_takes_the_fast_path() -> None:
    """The retrain records the version it pushed only after its push step made it the canary."""
    from monitoring.canary import DRIFT_PATH, PROMOTED, SHADOW_STARTED, VERDICT, CanaryController

    recorded: set[int] = set()
    controller = CanaryController(PromotionConfig(), "fraud", rollout=None)
    controller.drift_triggered = lambda version: version in recorded
    steps = stream(6, canary="noisy")
    controller.observe(next(steps).batch)
    recorded.add(CANARY)
    for _, step in zip(range(19), steps, strict=False):  # 2000 transactions in all
        controller.observe(step.batch)
    kinds = [e["kind"] for e in controller.history]
    assert kinds == [SHADOW_STARTED, DRIFT_PATH, VERDICT], kinds
    assert controller.history[-1]["action"] == PROMOTE
    assert PROMOTED not in kinds  # no rollout to apply it to


def test_the_fast_path_still_rolls_back_a_canary_that_floods_the_reviewers() -> None:
    policy = PromotionPolicy(PromotionConfig(), STABLE, CANARY, drift_triggered=True)
    index, action, _ = first_verdict(policy, stream(7, canary="alerting"), label_lag=None)
    assert (index, action) == (19, ROLLBACK)


def test_without_labels_the_maximum_duration_decides_by_score_agreement() -> None:
    config = PromotionConfig(max_shadow_s=3 * c.SECONDS_PER_DAY, max_alert_rate=1.0)
    agreeing = first_verdict(PromotionPolicy(config, STABLE, CANARY), stream(8, "noisy"), None)
    assert agreeing == (
        72,
        PROMOTE,
        "0 labelled frauds (of 30) after 3 days of shadow scoring; label-free checks pass and "
        "its scores agree with stable's (PSI 0.000 <= 0.1)",
    )
    shifted = first_verdict(PromotionPolicy(config, STABLE, CANARY), stream(8, "doubled"), None)
    assert shifted == (
        72,
        ROLLBACK,
        "0 labelled frauds (of 30) after 3 days of shadow scoring; not shown no worse (7300 "
        "shadow-scored transactions, score PSI 0.806 vs max 0.1)",
    )


def test_labels_for_unknown_or_evicted_transactions_are_ignored() -> None:
    policy = PromotionPolicy(PromotionConfig(max_pending=150), STABLE, CANARY)
    steps = stream(9)
    first, second = next(steps), next(steps)
    policy.update(first.batch)
    policy.update(second.batch)
    assert policy.add_labels(first.labels) == 50  # the oldest 50 were evicted
    assert policy.add_labels(second.labels + [("nope", 1)]) == 100
    assert policy.add_labels(second.labels) == 0  # each transaction is judged once


def test_policy_settings_are_parsed_and_checked_by_name() -> None:
    config = PromotionConfig.parse(["min_labelled_frauds=3", "max_alert_rate=0.2"])
    assert (config.min_labelled_frauds, config.max_alert_rate) == (3, 0.2)
    for bad, named in (
        (["min_frauds=3"], "min_frauds=3"),
        (["max_alert_rate"], "max_alert_rate"),
        (["max_alert_rate=lots"], "max_alert_rate='lots'"),
        (["max_alert_rate=2"], "max_alert_rate is a share"),
        (["min_batches=-1"], "min_batches must be a number >= 0"),
    ):
        with pytest.raises(ValueError, match=named):
            PromotionConfig.parse(bad)
