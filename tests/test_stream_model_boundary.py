"""The model boundary: what the model server refuses is dead-lettered by row, a score that is
no number never approves, and one transaction cannot stop scoring (real broker, real server)."""

from __future__ import annotations

import math

import orjson
import pytest
from stream_fixtures import (
    MODEL_NAME,
    consume,
    make_topics,
    read_topic,
)

from core import contract as c
from streaming.messages import DeadLetterFields
from streaming.scoring import ModelThresholds, Scorer, ThresholdStore, build_model_client

pytestmark = pytest.mark.slow
HUGE = 1e39  # finite in JSON and in Python, too large for the model's float32 input


def _inputs(amounts: list[float]) -> dict[str, list]:
    """Model inputs of one row per amount (an ordinary transaction otherwise)."""
    inputs: dict[str, list] = {name: [1.0] * len(amounts) for name in c.MODEL_INPUTS}
    inputs[c.TIMESTAMP] = ["2025-01-05T10:00:00Z"] * len(amounts)
    inputs[c.AMOUNT] = list(amounts)
    return inputs


def _tx(i: int, amount: float) -> bytes:
    return orjson.dumps(
        {
            c.TRANSACTION_ID: f"T-{i}",
            c.TIMESTAMP: f"2025-01-05T10:{i:02d}:00Z",
            c.CUSTOMER_ID: f"C{i % 3}",
            c.TERMINAL_ID: f"M{i % 5}",
            c.AMOUNT: amount,
        }
    )


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_score_that_is_no_number_never_approves(score: float) -> None:
    thresholds = ModelThresholds(1, review=0.5, block=0.9, label_delay_days=7)
    assert thresholds.decide(score) == c.FAILSAFE_DECISION != c.APPROVE


def test_the_real_server_refusal_is_isolated_to_its_row(model_server, model_base) -> None:
    client = build_model_client(model_server.url, MODEL_NAME)
    amounts = [10.0, 20.0, 30.0, 40.0, HUGE, 60.0, 70.0]
    scorer = Scorer(client, ThresholdStore(model_base), check_dtypes=False)
    with pytest.raises(Exception, match="400"):
        scorer.score(_inputs(amounts), len(amounts))
    scored, kept, refused = scorer.score_isolating(_inputs(amounts), len(amounts))
    assert kept == [0, 1, 2, 3, 5, 6]
    assert list(refused) == [4] and refused[4]  # the server's own message
    assert scored is not None and len(scored.scores) == len(kept)
    alone = scorer.score(_inputs([a for a in amounts if a != HUGE]), len(kept))
    assert scored.scores == alone.scores  # the kept rows in one call, as if alone


def test_values_the_signature_cannot_hold_are_refused_before_the_call(
    model_server,
    model_base,
) -> None:
    scorer = Scorer(build_model_client(model_server.url, MODEL_NAME), ThresholdStore(model_base))
    refused = scorer.check_inputs(_inputs([1.0, HUGE, -HUGE, math.inf]), 4)
    assert set(refused) == {1, 2}  # an infinity is a float32 value; the server takes it
    assert refused[1] == f"{c.AMOUNT}: {HUGE!r} does not fit the model input's DT_FLOAT"


def test_one_transaction_cannot_stop_scoring(broker, model_server, model_base, tmp_path) -> None:
    """Twenty-one transactions, one of them 1e39: the twenty are decided, that one is
    dead-lettered with a reason naming the amount, and the consumer goes on."""
    from kafka import KafkaProducer

    topics = make_topics(broker.bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for i in range(21):
        producer.send(topics.transactions, key=b"C", value=_tx(i, HUGE if i == 10 else 5.0 + i))
    producer.flush()
    producer.close()
    summary = consume(broker.bootstrap_servers, topics, model_server, model_base, tmp_path)
    assert (summary.decided, summary.dead_lettered) == (20, 1)
    (dead,) = read_topic(broker.bootstrap_servers, topics.dead_letter, expect=1)
    assert c.AMOUNT in dead["value"][DeadLetterFields.REASON]
    decided = read_topic(broker.bootstrap_servers, topics.decisions, expect=20)
    assert sorted(d["value"][c.TRANSACTION_ID] for d in decided) == sorted(
        f"T-{i}" for i in range(21) if i != 10
    )
