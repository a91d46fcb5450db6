"""Monitoring end to end on real servers: a Prometheus scraping a running consumer and model
server evaluates the alert rules and answers the dashboards; Alertmanager delivers to a webhook.

The stack: the embedded broker, the model server with its Prometheus exporter on
(k8s/base/serving/monitoring.config), the scoring consumer with drift monitoring and a retrain
trigger, serving /metrics; Prometheus and Alertmanager from tests/prometheus_fixtures.py. The
rules are monitoring.alert_rules' with every ``for`` cut to a second and the held-batch bound to
3 s, so conditions show within seconds.

Conditions are induced, not faked in the metrics:
* the served version's metadata holds a training reference whose spending is three times the
  replayed stream's (drift on the amount in every window), an evaluation precision of 0.9 (the
  tiny test model's alerts are mostly false), and a creation time in 2025 (older than 14 days);
* the model server is stopped while transactions arrive, and the consumer (no fallback
  deadline) holds its batch until the server is back.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from stream_fixtures import (
    LABEL_DELAY_DAYS,
    MODEL_NAME,
    REPO,
    install_version,
    make_topics,
    metadata,
    simulated,
    start_serving,
    wait_for,
    write_dataset,
)

from core import contract as c
from core.metadata import ALERT_PRECISION, ModelMetadata
from monitoring import alert_rules as ar
from monitoring import dashboard_render as dr

pytestmark = pytest.mark.slow

DASHBOARDS = sorted((REPO / "k8s/grafana").glob("*.json"))
MONITORING_CONFIG = REPO / "k8s/base/serving/monitoring.config"
POLICY = replace(ar.AlertPolicy(), max_held_seconds=3).with_pending("1s")
CONSUMER_JOB, SERVING_JOB = "fraud-consumer", "fraud-serving"
TF_REQUESTS = ":tensorflow:serving:request_count"  # TF Serving's name, on the embedded server too
# Grafana's $__rate_interval, wide enough to span the whole replay.
RATE_INTERVAL = "10m"
DEADLINE_S = 120.0


def reference_metadata(df: pd.DataFrame) -> ModelMetadata:
    """Version 1's metadata with the training reference described in the module doc."""
    from components.push.pusher import training_profile
    from core.features.batch import compute_features

    features = compute_features(df, LABEL_DELAY_DAYS).reset_index(drop=True)
    raw = df[[c.TIMESTAMP, c.AMOUNT, c.LABEL]].reset_index(drop=True)
    train = pd.concat([raw, features], axis=1)
    train[c.AMOUNT] = train[c.AMOUNT] * 3
    scores = np.random.default_rng(0).beta(0.5, 20, len(train))
    base = metadata(1)
    return replace(
        base,
        training_stats=training_profile(train, scores, base.thresholds.to_dict()),
        metrics={ALERT_PRECISION: 0.9},
    )


def scraped_before_traffic(server: Any, prometheus: Any) -> None:
    """One request, and both targets scraped since: the model server's request series exist
    before the replay, so its increase shows even when scrapes time out while both processes
    are busy."""
    from serving.client import ModelClient

    row = {name: 0.0 for name in c.MODEL_INPUTS} | {c.TIMESTAMP: "2025-01-01T00:00:00Z"}
    ModelClient(server.url, MODEL_NAME).predict([row])
    wait_for(
        lambda: (
            prometheus.query(f'{TF_REQUESTS}{{model_name="{MODEL_NAME}"}}')
            and prometheus.up(CONSUMER_JOB)
        ),
        DEADLINE_S,
        "the first request scraped",
    )


def failing_pipeline(job: Any) -> dict[str, Any]:
    raise RuntimeError(f"retrain {job.run_id}: this test's pipeline always fails")


def publish_reviews(bootstrap: str, topics: Any, frame: pd.DataFrame, ledger: Path) -> None:
    """Review outcomes of every fraud and of as many legitimate transactions, through the
    analysts' label publisher."""
    from streaming.review_labels import ReviewLabelPublisher

    frauds = frame.loc[frame[c.LABEL] == 1]
    reviewed = pd.concat([frauds, frame.loc[frame[c.LABEL] == 0].head(max(len(frauds), 200))])
    publisher = ReviewLabelPublisher(bootstrap, ledger, topics)
    try:
        for row in reviewed.itertuples(index=False):
            publisher.publish(review_outcome(row._asdict()))
    finally:
        publisher.close()


def review_outcome(row: dict[str, Any]) -> dict[str, Any]:
    return {
        c.TRANSACTION_ID: row[c.TRANSACTION_ID],
        c.TERMINAL_ID: row[c.TERMINAL_ID],
        c.CUSTOMER_ID: row[c.CUSTOMER_ID],
        c.TIMESTAMP: row[c.TIMESTAMP].strftime(c.TIMESTAMP_FORMAT),
        c.LABEL: int(row[c.LABEL]),
    }


@dataclass
class Stack:
    server: Any
    consumer: Any
    bootstrap: str
    topics: Any
    later: pd.DataFrame  # transactions held back for the outage test
    replayed: int
    registry: Any  # the consumer's metrics
    started_at: float  # epoch seconds, before the first scrape


@pytest.fixture(scope="module")
def stack(broker, model_store, prometheus, tmp_path_factory) -> Iterator[Stack]:
    from monitoring.drift import DriftConfig, DriftMetrics, RetrainMetrics
    from monitoring.loop import DriftLoop, DriftLoopConfig
    from monitoring.metrics import QualityMetrics
    from monitoring.quality import QualityMonitor
    from monitoring.retrain import RetrainConfig, RetrainTrigger
    from serving._launch import ServerProcess, free_port
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.metrics import StreamMetrics
    from streaming.replay import load_replay_frame, replay_frame
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    started_at = time.time()
    tmp = tmp_path_factory.mktemp("monitored")
    df = simulated(n_customers=150, n_days=21, seed=7)
    base = tmp / "models" / MODEL_NAME
    install_version(model_store.fraud, base, 1)
    reference_metadata(df).write(base / "1")
    server = ServerProcess(
        [
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=1",
            f"--monitoring_config_file={MONITORING_CONFIG}",
        ],
        log_path=tmp / "server.log",
    )
    start_serving(server)
    topics = make_topics(broker.bootstrap_servers, partitions=2)
    state_dir = tmp / "stream"
    metrics = StreamMetrics()
    trigger = RetrainTrigger(
        RetrainConfig(run_dir=tmp / "retrain", state_dir=state_dir, model_base_path=base),
        runner=failing_pipeline,
        metrics=RetrainMetrics(metrics.registry),
    )
    loop = DriftLoop(
        DriftLoopConfig(
            model_base_path=base,
            windows_log=state_dir / "drift_windows.jsonl",
            warmup_s=0.0,
            label_wait_s=0.0,
        ),
        DriftConfig(
            window_seconds=c.SECONDS_PER_DAY,
            hop_seconds=c.SECONDS_PER_DAY,
            # Partitions may be fetched far apart in event time: a day's window may then hold
            # one partition's rows only (~150), and a skipped window breaks the sustained streak
            # that starts the (failing) retrain.
            min_samples=50,
            sustained_windows=2,
        ),
        DriftMetrics(metrics.registry),
        trigger,
        quality=QualityMonitor(QualityMetrics(metrics.registry)),
    )
    consumer = StreamConsumer(
        ConsumerConfig(
            bootstrap_servers=broker.bootstrap_servers,
            group_id=f"g-{topics.transactions}",
            topics=topics,
            state_dir=state_dir,
            exit_when_idle_s=3_600,
            fsync_snapshots=False,
            decision_deadline_s=None,
            retry_max_s=0.5,
        ),
        Scorer(build_model_client(server.url, MODEL_NAME), ThresholdStore(base)),
        metrics,
        drift=loop,
    )
    metrics_port = free_port()
    http = metrics.serve(metrics_port, health=consumer.health)
    thread = threading.Thread(target=consumer.run, name="monitored-consumer", daemon=True)
    thread.start()
    prometheus.scrape(CONSUMER_JOB, [f"127.0.0.1:{metrics_port}"])
    prometheus.scrape(SERVING_JOB, [f"127.0.0.1:{server.port}"])
    prometheus.load_rules(ar.render(ar.rules_document(POLICY)))
    try:
        scraped_before_traffic(server, prometheus)
        frame = load_replay_frame(write_dataset(df, tmp / "transactions.parquet"), LABEL_DELAY_DAYS)
        end = frame[c.TIMESTAMP].max()
        first = frame.loc[frame[c.TIMESTAMP] < end - pd.Timedelta(hours=24)]
        middle = frame.loc[frame.index.difference(first.index)]
        middle = middle.loc[middle[c.TIMESTAMP] < end - pd.Timedelta(hours=12)]
        later = frame.loc[frame[c.TIMESTAMP] >= end - pd.Timedelta(hours=12)]
        replay_frame(first, broker.bootstrap_servers, topics=topics, progress=False)
        wait_for(
            lambda: consumer.summary.decided >= len(first),
            DEADLINE_S,
            f"{len(first)} transactions decided",
        )
        # The replay's own labels reach the consumer before the decisions they judge (event
        # time runs days ahead of the decisions here): the monitors count those as unmatched.
        # Analysts' outcomes arrive after the decisions, as labels do in production.
        publish_reviews(broker.bootstrap_servers, topics, first, tmp / "review-ledger.jsonl")
        # The consumer reads labels ahead of each batch of transactions: the next ones bring
        # the reviews in.
        replay_frame(
            middle, broker.bootstrap_servers, topics=topics, progress=False, trailing_labels=False
        )
        decided = len(first) + len(middle)
        wait_for(lambda: consumer.summary.decided >= decided, DEADLINE_S, f"{decided} decided")
        yield Stack(
            server,
            consumer,
            broker.bootstrap_servers,
            topics,
            later,
            decided,
            metrics.registry,
            started_at,
        )
    finally:
        prometheus.load_rules("groups: []\n")
        for job in (CONSUMER_JOB, SERVING_JOB):
            prometheus.scrape(job, [])
        consumer.stop()
        thread.join(timeout=60)
        http.shutdown()
        server.stop()


def test_prometheus_scrapes_the_consumer_and_the_model_server(stack: Stack, prometheus) -> None:
    for job in (CONSUMER_JOB, SERVING_JOB):
        wait_for(lambda job=job: prometheus.up(job), DEADLINE_S, f"{job} scraped and up")


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard file: panel title, PromQL) of every panel target of every dashboard, with the
    dashboard's variables at their defaults and ``$__rate_interval`` at RATE_INTERVAL."""
    return [
        (f"{path.name}: {panel.title}", expr)
        for path in DASHBOARDS
        for panel in dr.panels(json.loads(path.read_text()), RATE_INTERVAL)
        for expr, _legend in panel.targets
    ]


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_every_dashboard_query_returns_data(stack: Stack, prometheus) -> None:
    queries = dashboard_queries()
    assert len(DASHBOARDS) >= 1 and queries
    pending = dict.fromkeys(queries)

    def all_answered() -> bool:
        for key in list(pending):
            if _has_data(prometheus.query(key[1])):
                del pending[key]
        return not pending

    answered = wait_for(all_answered, DEADLINE_S, "dashboard data", poll_s=1.0, quiet=True)
    debug = exported_lines(stack, ("matched", "window_labels", "labels_consumed"))
    answers = "\n".join(f"{t}: {q} -> {prometheus.query(q)}" for t, q in pending)
    assert answered, f"queries without data:\n{answers}\n{debug}"


def exported_lines(stack: Stack, needles: tuple[str, ...]) -> str:
    """The consumer's exported samples whose line holds one of ``needles`` (failure context)."""
    from prometheus_client import generate_latest

    lines = generate_latest(stack.registry).decode().splitlines()
    return "\n".join(x for x in lines if not x.startswith("#") and any(n in x for n in needles))


def _fires(stack: Stack, prometheus, webhook, name: str) -> dict[str, Any]:
    """Wait until Prometheus fires ``name`` and Alertmanager delivers it to the webhook."""
    rule = next(r for g in ar.rule_groups(POLICY) for r in g["rules"] if r["alert"] == name)
    fired = wait_for(lambda: prometheus.firing(name), DEADLINE_S, name, quiet=True)
    context = exported_lines(stack, ("fraud_drift_", "fraud_retrain_runs", "held", "failures"))
    assert fired, (
        f"{name} not firing; {rule['expr']} -> {prometheus.query(rule['expr'])}\n{context}"
    )
    delivered = wait_for(lambda: webhook.alerts(name), DEADLINE_S, f"{name} at the webhook")
    return delivered[-1]


@pytest.mark.parametrize(
    "name",
    [
        "FraudDriftDetected",
        "FraudPrecisionBelowTraining",
        "FraudNoNewModel",
        "FraudRetrainFailed",
    ],
)
def test_model_alert_fires_and_reaches_the_webhook(
    stack: Stack, prometheus, webhook, name: str
) -> None:
    alert = _fires(stack, prometheus, webhook, name)
    assert alert["annotations"]["runbook"] == f"{ar.RUNBOOK}#{name.lower()}"
    assert alert["annotations"]["summary"]


def test_stream_alerts_stay_quiet_while_scoring_works(stack: Stack, prometheus) -> None:
    for name in ("FraudConsumerHoldingBatch", "FraudScoringFailures", "FraudDeadLetterRate"):
        assert prometheus.firing(name) == [], name


def test_stopping_the_model_server_fires_the_holding_alert_until_it_is_back(
    stack: Stack, prometheus, webhook
) -> None:
    from streaming.replay import replay_frame

    stack.server.stop()
    try:
        replay_frame(
            stack.later, stack.bootstrap, topics=stack.topics, progress=False, trailing_labels=False
        )
        held = _fires(stack, prometheus, webhook, "FraudConsumerHoldingBatch")
        assert held["labels"]["severity"] == ar.CRITICAL
        _fires(stack, prometheus, webhook, "FraudScoringFailures")
    finally:
        start_serving(stack.server)
    wait_for(
        lambda: webhook.alerts("FraudConsumerHoldingBatch", "resolved"),
        DEADLINE_S,
        "FraudConsumerHoldingBatch resolved at the webhook",
    )
    total = stack.replayed + len(stack.later)
    wait_for(lambda: stack.consumer.summary.decided >= total, DEADLINE_S, "held batch decided")


def test_every_dashboard_renders_with_data_in_every_panel(stack: Stack, prometheus, tmp_path):
    """Each dashboard drawn from this stack's Prometheus (run last: the outage shows), every
    panel with data. docs/img holds `make run`'s renders instead (`make dashboards`): this
    stack's tiny model and induced faults are not what a user sees."""
    start, end = stack.started_at, time.time()
    for path in DASHBOARDS:
        png = tmp_path / dr.png_name(path)
        counts = dr.render(path, prometheus.url, png, start, end, step=2.0, rate_interval="30s")
        assert png.stat().st_size > 50_000, png
        empty = [title for title, n in counts.items() if n == 0]
        assert not empty, f"{path.name}: panels without data {empty}"
