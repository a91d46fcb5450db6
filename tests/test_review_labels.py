"""Analysts' review outcomes as labels (streaming.review_labels): the exact label message, errors
that name the field, and once per transaction on the embedded broker through the publisher, the
consumer's POST /labels and `fraud label publish`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from stream_fixtures import make_topics, read_topic, topic_env, wait_for

from core import contract as c
from streaming.messages import LABEL_FIELDS
from streaming.review_labels import (
    ALREADY_PUBLISHED,
    PUBLISHED,
    LabelConflict,
    ReviewLabelPublisher,
    label_endpoint,
    label_from_outcome,
)

NOW = datetime(2025, 1, 9, 10, 30, tzinfo=UTC)


def outcome(tid: str = "tx-1", fraud: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        c.TRANSACTION_ID: tid,
        c.TERMINAL_ID: "term-7",
        c.CUSTOMER_ID: "cust-3",
        c.TIMESTAMP: "2025-01-02T08:15:00Z",
        c.LABEL: fraud,
    } | extra


def test_an_outcome_becomes_the_label_message_available_now() -> None:
    message = json.loads(label_from_outcome(outcome(), now=NOW))
    assert message == outcome() | {c.LABEL_AVAILABLE_AT: "2025-01-09T10:30:00Z"}
    assert list(message) == list(LABEL_FIELDS)
    given = outcome(**{c.LABEL_AVAILABLE_AT: "2025-01-03T00:00:00Z"})
    assert json.loads(label_from_outcome(given, now=NOW))[c.LABEL_AVAILABLE_AT] == (
        "2025-01-03T00:00:00Z"
    )


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({k: v for k, v in outcome().items() if k != c.TRANSACTION_ID}, c.TRANSACTION_ID),
        (outcome(fraud=2), c.LABEL),
        (outcome(fraud="1"), c.LABEL),
        (outcome(fraud=True), c.LABEL),
        (outcome(**{c.TIMESTAMP: "yesterday"}), "yesterday"),
        (outcome(comment="looks fine"), "comment"),
        (outcome(**{c.LABEL_AVAILABLE_AT: "2025-01-01T00:00:00Z"}), c.LABEL_AVAILABLE_AT),
        ([1, 2], "JSON object"),
    ],
)
def test_a_bad_outcome_is_refused_naming_what_is_wrong(bad: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        label_from_outcome(bad, now=NOW)


@pytest.fixture
def topics(broker) -> Any:
    return make_topics(broker.bootstrap_servers, partitions=2)


@pytest.fixture
def publisher(broker, topics, tmp_path: Path) -> Iterator[ReviewLabelPublisher]:
    pub = ReviewLabelPublisher(broker.bootstrap_servers, tmp_path / "ledger.jsonl", topics)
    yield pub
    pub.close()


def labels_on(broker, topics, expect: int) -> list[dict[str, Any]]:
    return read_topic(broker.bootstrap_servers, topics.labels, expect=expect)


def test_the_same_outcome_twice_is_one_label_keyed_by_transaction(
    broker, topics, publisher, tmp_path: Path
) -> None:
    assert publisher.publish(outcome("tx-1", 1)) == PUBLISHED
    assert publisher.publish(outcome("tx-1", 1)) == ALREADY_PUBLISHED
    assert publisher.publish(outcome("tx-2", 0)) == PUBLISHED
    with pytest.raises(LabelConflict, match="tx-1"):
        publisher.publish(outcome("tx-1", 0))
    # A restarted publisher knows from its ledger what was published.
    again = ReviewLabelPublisher(broker.bootstrap_servers, tmp_path / "ledger.jsonl", topics)
    try:
        assert again.publish(outcome("tx-2", 0)) == ALREADY_PUBLISHED
    finally:
        again.close()
    labels = labels_on(broker, topics, 2)
    assert sorted((m["key"], m["value"][c.LABEL]) for m in labels) == [(b"tx-1", 1), (b"tx-2", 0)]


# One process publishing review outcomes on a shared ledger; a consumer replica serving
# POST /labels is such a process. It waits for the start file, so both race from the same moment.
PUBLISHER_PROCESS = """
import json, sys, time
from pathlib import Path
from core.settings import Topics
from streaming.review_labels import ReviewLabelPublisher

bootstrap, ledger, labels_topic, start, outcomes, ready = sys.argv[1:7]
publisher = ReviewLabelPublisher(bootstrap, Path(ledger), Topics(labels=labels_topic))
Path(ready).touch()
while not Path(start).exists():
    time.sleep(0.01)
print(json.dumps([publisher.publish(o) for o in json.loads(outcomes)]))
publisher.close()
"""


def test_replicas_sharing_a_ledger_publish_each_outcome_once(broker, topics, tmp_path) -> None:
    """Two processes on one ledger (replicas on a shared volume), given the same outcomes at
    the same time: each transaction is published by exactly one of them."""
    import os
    import subprocess
    import sys

    ledger, start = tmp_path / "shared-ledger.jsonl", tmp_path / "start"
    early = ReviewLabelPublisher(broker.bootstrap_servers, ledger, topics)
    outcomes = [outcome(f"tx-{i}", i % 2) for i in range(40)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-c", PUBLISHER_PROCESS, broker.bootstrap_servers, str(ledger)]
    argv += [topics.labels, str(start), json.dumps(outcomes)]
    ready = [tmp_path / f"ready-{n}" for n in (0, 1)]
    procs = [
        subprocess.Popen([*argv, str(r)], env=env, stdout=subprocess.PIPE, text=True) for r in ready
    ]
    # Both have read the (empty) ledger before either publishes: they race from there.
    wait_for(lambda: all(r.exists() for r in ready), 120, "both publishers started")
    start.touch()
    answers = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for i, statuses in enumerate(zip(*answers, strict=True)):
        assert sorted(statuses) == sorted([PUBLISHED, ALREADY_PUBLISHED]), (i, statuses)
    labels = labels_on(broker, topics, len(outcomes))
    assert sorted(m["key"] for m in labels) == sorted(
        o[c.TRANSACTION_ID].encode() for o in outcomes
    )
    assert len(ledger.read_text().splitlines()) == len(outcomes)
    # A publisher that started before them learns their labels at its next publish.
    try:
        assert early.publish(outcome("tx-2", 0)) == ALREADY_PUBLISHED
        with pytest.raises(LabelConflict, match="tx-3"):
            early.publish(outcome("tx-3", 0))
    finally:
        early.close()


def test_a_ledger_that_is_not_one_is_refused_with_its_line(broker, topics, tmp_path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(json.dumps({c.TRANSACTION_ID: "a", c.LABEL: 1}) + "\nnot json\n")
    with pytest.raises(ValueError, match=f"{ledger}:2"):
        ReviewLabelPublisher(broker.bootstrap_servers, ledger, topics)


def post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def labels_url(publisher) -> Iterator[str]:
    from serving._launch import free_port
    from streaming.metrics import StreamMetrics

    port = free_port()
    server = StreamMetrics().serve(port, labels=label_endpoint(publisher))
    yield f"http://127.0.0.1:{port}/labels"
    server.shutdown()


def test_the_consumer_endpoint_publishes_once_and_names_bad_fields(
    broker, topics, labels_url: str
) -> None:
    body = json.dumps(outcome("tx-9", 1)).encode()
    assert post(labels_url, body) == (200, {"status": PUBLISHED, c.TRANSACTION_ID: "tx-9"})
    assert post(labels_url, body) == (200, {"status": ALREADY_PUBLISHED, c.TRANSACTION_ID: "tx-9"})
    code, answer = post(labels_url, json.dumps(outcome("tx-9", 0)).encode())
    assert code == 409 and "tx-9" in answer["error"]
    missing = {k: v for k, v in outcome("tx-10").items() if k != c.CUSTOMER_ID}
    code, answer = post(labels_url, json.dumps(missing).encode())
    assert code == 400 and c.CUSTOMER_ID in answer["error"]
    code, answer = post(labels_url, json.dumps(outcome("tx-10", fraud="yes")).encode())
    assert code == 400 and c.LABEL in answer["error"]
    code, answer = post(labels_url, b"{not json")
    assert code == 400 and "not JSON" in answer["error"]
    code, answer = post(labels_url, b"x" * (64 * 1024 + 1))
    assert code == 413
    code, _ = post(labels_url, b"", method="PUT")
    assert code == 405
    [label] = labels_on(broker, topics, 1)
    assert label["key"] == b"tx-9" and label["value"][c.LABEL] == 1


def test_the_command_publishes_once(broker, topics, tmp_path: Path, monkeypatch, capsys) -> None:
    from app.cli import main

    for name, value in topic_env(topics).items():
        monkeypatch.setenv(name, value)
    argv = [
        "label",
        "publish",
        f"--bootstrap-servers={broker.bootstrap_servers}",
        f"--ledger={tmp_path / 'cli-ledger.jsonl'}",
        "--transaction-id=tx-5",
        "--terminal-id=term-1",
        "--customer-id=cust-1",
        "--tx-datetime=2025-01-02T08:15:00Z",
    ]
    assert main([*argv, "--is-fraud=1"]) == 0
    assert main([*argv, "--is-fraud=1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"tx-5: {c.LABEL}=1 {PUBLISHED}",
        f"tx-5: {c.LABEL}=1 {ALREADY_PUBLISHED}",
    ]
    assert main([*argv, "--is-fraud=0"]) == 2
    assert "tx-5" in capsys.readouterr().err
    [label] = labels_on(broker, topics, 1)
    assert label["key"] == b"tx-5"
