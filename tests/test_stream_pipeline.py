"""End to end on a real broker and a real model server: replay -> consume -> decisions.

One module-scoped run (replay a simulated dataset, consume it once) feeds most assertions.
"""

from __future__ import annotations

import base64
import gc
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from stream_fixtures import (
    LABEL_DELAY_DAYS,
    MODEL_NAME,
    VERSIONS,
    consume,
    decision_features,
    install_version,
    make_topics,
    read_topic,
    reference_stream_features,
    simulated,
    write_dataset,
)

from app import stream_cli as cli
from core import contract as c
from core.features.batch import compute_features
from core.settings import Topics
from streaming.broker import create_topics, free_port
from streaming.consumer import ConsumerSummary
from streaming.dataset import load_consumed
from streaming.messages import DeadLetterFields, DecisionFields
from streaming.metrics import PREFIX, StreamMetrics

pytestmark = pytest.mark.slow
RTOL, ATOL = 1e-9, 1e-6  # batch vs streaming sums differ in the last bits only


@dataclass
class Run:
    df: pd.DataFrame
    topics: Topics
    summary: ConsumerSummary
    decisions: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    metrics_text: str
    state_dir: Path


@pytest.fixture(scope="module")
def run(broker, model_server, model_base, tmp_path_factory, monkeypatch_module) -> Run:
    work = tmp_path_factory.mktemp("pipeline")
    df = simulated(250, 30, seed=3)
    path = write_dataset(df, work / "raw.csv.gz")
    topics = make_topics(broker.bootstrap_servers)
    for name, value in vars(topics).items():
        monkeypatch_module.setenv(f"FRAUD_TOPIC_{name.upper()}", value)
    # The CLI replay, as an operator runs it.
    assert (
        cli.main(
            ["stream", "replay", str(path), "--bootstrap-servers", broker.bootstrap_servers]
            + ["--no-progress"]
        )
        == 0
    )
    metrics = StreamMetrics()
    port = free_port()
    server = metrics.serve(port, addr="127.0.0.1")
    try:
        summary = consume(
            broker.bootstrap_servers, topics, model_server, model_base, work / "state", metrics
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
    decisions = read_topic(broker.bootstrap_servers, topics.decisions, expect=len(df))
    alerts = read_topic(broker.bootstrap_servers, topics.alerts)
    return Run(df, topics, summary, decisions, alerts, text, work / "state")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_transaction_gets_exactly_one_decision(run: Run) -> None:
    ids = [d["value"][c.TRANSACTION_ID] for d in run.decisions]
    assert len(ids) == len(set(ids)) == len(run.df)
    assert set(ids) == set(run.df[c.TRANSACTION_ID])
    assert run.summary.decided == len(run.df) and run.summary.dead_lettered == 0
    # Keyed by transaction id, carrying what the brief asks for.
    d = run.decisions[0]
    assert d["key"].decode() == d["value"][c.TRANSACTION_ID]
    for key in (
        DecisionFields.SCORE,
        DecisionFields.DECISION,
        DecisionFields.MODEL_VERSION,
        DecisionFields.SCORING_MS,
        DecisionFields.END_TO_END_MS,
        c.TIMESTAMP,
    ):
        assert key in d["value"]


def test_decisions_use_the_answering_versions_thresholds(run: Run) -> None:
    _, review, block = VERSIONS[1]
    counts = {name: 0 for name in c.DECISIONS}
    for d in run.decisions:
        v = d["value"]
        assert v[DecisionFields.MODEL_VERSION] == 1
        assert v[DecisionFields.DECISION] == c.decide(v[DecisionFields.SCORE], review, block)
        counts[v[DecisionFields.DECISION]] += 1
    assert all(counts.values()), f"the test model should produce every decision: {counts}"


def test_alerts_are_exactly_the_review_and_block_decisions(run: Run) -> None:
    flagged = {
        d["value"][c.TRANSACTION_ID]
        for d in run.decisions
        if d["value"][DecisionFields.DECISION] != c.APPROVE
    }
    alerted = [a["value"] for a in run.alerts]
    assert {a[DecisionFields.DECISION] for a in alerted} <= {c.REVIEW, c.BLOCK}
    assert [a[c.TRANSACTION_ID] for a in alerted].__len__() == len(flagged)
    assert {a[c.TRANSACTION_ID] for a in alerted} == flagged


def test_online_features_equal_the_batch_engine(run: Run) -> None:
    online = decision_features(run.decisions)
    batch = compute_features(run.df, LABEL_DELAY_DAYS)
    batch.index = run.df[c.TRANSACTION_ID].to_numpy()
    online = online.loc[batch.index]
    for name in c.STATEFUL_FEATURES:
        np.testing.assert_allclose(
            online[name].to_numpy(), batch[name].to_numpy(), rtol=RTOL, atol=ATOL, err_msg=name
        )
    # And exactly what one uninterrupted streaming engine computes.
    pd.testing.assert_frame_equal(online, reference_stream_features(run.df).loc[batch.index])
    assert (online[c.terminal_count("30d")] > 0).mean() > 0.5  # labels did arrive


def test_consumed_data_is_persisted_for_retraining(run: Run) -> None:
    got = load_consumed(run.state_dir)
    want = run.df[list(c.RAW_FIELDS)]
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(
        got[list(c.RAW_FIELDS)].reset_index(drop=True),
        want.reset_index(drop=True),
        check_dtype=False,
    )


def test_metrics_are_served(run: Run) -> None:
    text = run.metrics_text
    n = len(run.df)
    assert f"{PREFIX}consumed_total {float(n)}" in text
    assert f"{PREFIX}decided_total {float(n)}" in text
    assert f'{PREFIX}serving_model_version{{model_name="{MODEL_NAME}"}} 1.0' in text
    assert f"{PREFIX}end_to_end_latency_seconds_count {float(n)}" in text
    for name in ("scoring_latency_seconds", "batch_size", "score", "consumer_lag"):
        assert f"{PREFIX}{name}" in text


def test_bad_messages_go_to_the_dead_letter_topic(broker, model_server, model_base, tmp_path):
    from kafka import KafkaProducer

    topics = make_topics(broker.bootstrap_servers)
    good = {
        c.TRANSACTION_ID: "T-good",
        c.TIMESTAMP: "2025-01-05T10:00:00Z",
        c.CUSTOMER_ID: "C1",
        c.TERMINAL_ID: "M1",
        c.AMOUNT: 10.0,
    }
    bad = {
        "malformed": b'{"transaction_id": "T-x", ',
        "missing": orjson.dumps({k: v for k, v in good.items() if k != c.AMOUNT}),
        "negative": orjson.dumps({**good, c.TRANSACTION_ID: "T-neg", c.AMOUNT: -5}),
    }
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for value in [*bad.values(), orjson.dumps(good)]:
        producer.send(topics.transactions, key=b"C1", value=value)
    producer.flush()
    producer.close()
    summary = consume(broker.bootstrap_servers, topics, model_server, model_base, tmp_path)
    assert (summary.decided, summary.dead_lettered) == (1, 3)
    dead = {
        base64.b64decode(d["value"][DeadLetterFields.VALUE_B64]): d["value"]
        for d in read_topic(broker.bootstrap_servers, topics.dead_letter, expect=3)
    }
    assert set(dead) == set(bad.values())
    kinds = {name: dead[raw][DeadLetterFields.REASON_KIND] for name, raw in bad.items()}
    assert kinds == {
        "malformed": "malformed_json",
        "missing": "missing_field",
        "negative": "invalid_value",
    }
    assert "negative amount" in dead[bad["negative"]][DeadLetterFields.REASON]
    assert c.AMOUNT in dead[bad["missing"]][DeadLetterFields.REASON]
    for value in dead.values():
        assert value[DeadLetterFields.SOURCE_TOPIC] == topics.transactions
        assert value[DeadLetterFields.SOURCE_OFFSET] >= 0
    decisions = read_topic(broker.bootstrap_servers, topics.decisions, expect=1)
    assert [d["value"][c.TRANSACTION_ID] for d in decisions] == ["T-good"]


def test_topics_create_is_idempotent(broker) -> None:
    topics = Topics(**{k: f"idem-{v}" for k, v in vars(Topics()).items()})
    first = create_topics(broker.bootstrap_servers, topics, partitions=2)
    again = create_topics(broker.bootstrap_servers, topics, partitions=2)
    assert set(first.values()) == {"created"} and set(again.values()) == {"exists"}


def test_a_replay_in_two_parts_publishes_the_labels_of_one_replay(broker) -> None:
    """The second part carries the first part's labels that fall due during it (what the
    latency bench's mid-stream runs rely on): per labels partition, the same messages in the
    same order as one replay of the whole stream."""
    from streaming.replay import replay_frame

    df = simulated(60, 20, seed=5)
    split = len(df) // 2
    bootstrap = broker.bootstrap_servers
    whole, parts = make_topics(bootstrap), make_topics(bootstrap)
    one = replay_frame(df, bootstrap, whole, progress=False)
    first = replay_frame(df.iloc[:split], bootstrap, parts, progress=False, trailing_labels=False)
    second = replay_frame(df.iloc[split:], bootstrap, parts, progress=False, prior=df.iloc[:split])
    assert first.labels + second.labels == one.labels == len(df)
    assert 0 < first.labels < split  # some of the first part's labels were left to the second

    def by_partition(topic: str) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for m in sorted(read_topic(bootstrap, topic, expect=len(df)), key=lambda m: m["offset"]):
            out.setdefault(m["partition"], []).append(m["raw"])
        return out

    assert by_partition(parts.labels) == by_partition(whole.labels)
    assert by_partition(parts.transactions) == by_partition(whole.transactions)


def test_broker_daemon_commands(tmp_path, capsys) -> None:
    state = ["--state-dir", str(tmp_path)]
    assert cli.main(["broker", "status", *state]) == 1
    capsys.readouterr()
    assert cli.main(["broker", "start", *state]) == 0
    try:
        started = capsys.readouterr().out
        bootstrap = started.split("FRAUD_BOOTSTRAP_SERVERS=")[1].strip()
        assert cli.main(["broker", "status", *state]) == 0
        out = capsys.readouterr().out
        assert "running" in out and f"{bootstrap} reachable" in out
        created = create_topics(bootstrap, Topics(), partitions=1)
        assert set(created.values()) == {"created"}
    finally:
        assert cli.main(["broker", "stop", *state]) == 0
    assert cli.main(["broker", "status", *state]) == 1
    assert "not running" in capsys.readouterr().out


def test_a_new_model_version_decides_with_its_own_thresholds(
    broker,
    model_server,
    model_base,
    model_store,
    tmp_path,
) -> None:
    """Hot swap: once version 2 is on the models volume, decisions say 2 and use its
    thresholds. (Last in the module: the server keeps serving version 2 afterwards.)"""
    from serving.client import ModelClient

    install_version(model_store.fraud, model_base, 2, with_metadata=True)
    client = ModelClient(model_server.url, MODEL_NAME)
    deadline = time.monotonic() + 60
    while client.current_version() != "2":
        assert time.monotonic() < deadline, "version 2 was not loaded"
        time.sleep(0.5)
    topics = make_topics(broker.bootstrap_servers)
    df = simulated(40, 10, seed=9)
    from streaming.replay import replay_frame

    replay_frame(df, broker.bootstrap_servers, topics, progress=False)
    assert gc.get_freeze_count() == 0  # the replay takes its heap out of the collector, then back
    consume(broker.bootstrap_servers, topics, model_server, model_base, tmp_path)
    decisions = read_topic(broker.bootstrap_servers, topics.decisions, expect=len(df))
    _, review, block = VERSIONS[2]
    for d in decisions:
        v = d["value"]
        assert v[DecisionFields.MODEL_VERSION] == 2
        assert v[DecisionFields.THRESHOLDS] == {c.REVIEW: review, c.BLOCK: block}
        assert v[DecisionFields.DECISION] == c.decide(v[DecisionFields.SCORE], review, block)


def test_the_consumer_scores_through_grpc_as_through_rest(
    broker, model_server, model_base, tmp_path, monkeypatch
) -> None:
    """``fraud stream consume --serving-protocol grpc``: every transaction decided, each with
    the score and version the REST protocol gives it (two groups consume the same topic)."""
    bootstrap = broker.bootstrap_servers
    df = simulated(30, 5, seed=11)
    topics = make_topics(bootstrap)
    for name, value in vars(topics).items():
        monkeypatch.setenv(f"FRAUD_TOPIC_{name.upper()}", value)
    path = write_dataset(df, tmp_path / "raw.csv.gz")
    assert (
        cli.main(["stream", "replay", str(path), "--bootstrap-servers", bootstrap, "--no-progress"])
        == 0
    )
    common = [
        "stream", "consume", "--bootstrap-servers", bootstrap, "--model-name", MODEL_NAME,
        "--model-base-path", str(model_base), "--exit-when-idle-seconds", "3",
    ]  # fmt: skip
    for protocol, url in (("grpc", model_server.grpc_target), ("rest", model_server.url)):
        args = ["--serving-protocol", protocol, "--serving-url", url, "--group-id", protocol]
        assert cli.main([*common, *args, "--state-dir", str(tmp_path / protocol)]) == 0
    decisions = read_topic(bootstrap, topics.decisions, expect=2 * len(df))
    answers: dict[str, list[tuple[float, Any]]] = {}
    for d in decisions:
        value = d["value"]
        answers.setdefault(value[c.TRANSACTION_ID], []).append(
            (value[DecisionFields.SCORE], value[DecisionFields.MODEL_VERSION])
        )
    assert set(answers) == set(df[c.TRANSACTION_ID])
    for tx, pair in answers.items():
        assert len(pair) == 2, f"{tx}: {pair}"
        (grpc_score, grpc_version), (rest_score, rest_version) = pair
        assert grpc_version == rest_version
        assert abs(grpc_score - rest_score) <= 1e-6, f"{tx}: {pair}"
