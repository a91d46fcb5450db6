"""Shadow scoring and automatic promote / rollback on a real broker and model server.

The server reads a model config file (polled every 0.3 s) holding these versions of ``fraud``:
1 (stable at the start of each test), 2 (another model, with other thresholds), 3 (version
1's model with thresholds it never reaches: blind to fraud), 4 (a model whose inputs are not
the fraud model's: every shadow call fails), 5 (a copy of version 1: no worse) and 6 (version
1's model reviewing every transaction: it catches every fraud, so 3 is worse than it). A
replay publishes a simulated stream at a steady rate while the consumer scores it, so every
promotion and rollback happens under load.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving_fixtures import model_config, serve_model_config
from stream_fixtures import (
    MODEL_NAME,
    ModelStore,
    child_env,
    consumer_command,
    make_topics,
    metadata,
    read_topic,
    simulated,
    wait_for,
    write_dataset,
)

from app import demo_report
from core import contract as c
from core.metadata import ModelMetadata, Thresholds
from core.settings import Topics
from monitoring.canary import (
    EVENT,
    PROMOTED,
    ROLLED_BACK,
    SHADOW_STARTED,
    VERDICT,
    CanaryController,
    shadow_scoring,
)
from monitoring.promotion import PROMOTE, ROLLBACK, PromotionConfig
from monitoring.retrain_history import PUSHED, STARTED
from serving._launch import ServerProcess
from serving.rollout import CANARY, STABLE, Rollout
from streaming import messages as m
from streaming.consumer import ConsumerConfig, ConsumerSummary, StreamConsumer
from streaming.messages import DecisionFields, ShadowFields
from streaming.metrics import StreamMetrics
from streaming.replay import Pacing, replay
from streaming.scoring import Scorer, ThresholdStore, build_model_client

pytestmark = pytest.mark.slow

OTHER, BLIND, FAILING, COPY, WARY = 2, 3, 4, 5, 6
RATE = 1500.0  # transactions/s published while the consumer scores
# Deeper than the default: a test stream is short, and a skipped shadow batch leaves its
# transactions out of the label join.
QUEUE = 10
# Judged on labels only: the stream is shorter than the maximum shadow duration.
BY_LABELS = {"min_labelled_frauds": 3, "max_alert_rate": 1.0, "max_shadow_s": 10.0**9}


def _install(source: Path, base: Path, version: int, meta: ModelMetadata) -> None:
    staging = base / f".tmp-{version}"
    shutil.copytree(source, staging)
    dataclasses.replace(meta, version=version).write(staging)
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Path:
    root = tmp_path_factory.mktemp("shadow")
    base = root / MODEL_NAME
    base.mkdir()
    fraud = model_store.fraud
    _install(fraud / "1", base, 1, metadata(1))
    _install(fraud / "2", base, OTHER, metadata(2))
    _install(
        fraud / "1", base, BLIND, dataclasses.replace(metadata(1), thresholds=Thresholds(1, 1))
    )
    _install(model_store.example / "1", base, FAILING, metadata(1))
    _install(fraud / "1", base, COPY, metadata(1))
    _install(fraud / "1", base, WARY, dataclasses.replace(metadata(1), thresholds=Thresholds(0, 1)))
    config = model_config(
        [
            {
                "name": MODEL_NAME,
                "base_path": base,
                "policy": "specific { versions: 1 }",
                "labels": {STABLE: 1},
            }
        ]
    )
    (root / "models.config").write_text(config)
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[ServerProcess]:
    yield from serve_model_config(models)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A simulated dataset (with labels 7 days after each transaction) and its length."""
    df = simulated(150, 21, seed=11)
    return write_dataset(df, tmp_path_factory.mktemp("data") / "raw.parquet"), len(df)


def rollout(models: Path, server: ServerProcess) -> Rollout:
    return Rollout(
        config_path=models / "models.config",
        model_name=MODEL_NAME,
        base_path=models / MODEL_NAME,
        serving_url=server.url,
        timeout_s=60.0,
    )


@pytest.fixture
def canary_of(models: Path, server: ServerProcess):
    """Make a version canary beside stable 1; afterwards, stable is 1 alone again."""
    control = rollout(models, server)

    def make(version: int, stable: int = 1) -> Rollout:
        if stable != 1:
            control.rollback(to_version=stable)
        control.canary(version)
        return control

    yield make
    control.rollback(to_version=1)


def publish(path: Path, bootstrap: str, topics: Topics) -> threading.Thread:
    """Replay ``path`` at ``RATE`` in the background (the load the consumer works under)."""
    thread = threading.Thread(
        target=replay,
        args=(path, bootstrap, topics),
        kwargs={"pacing": Pacing(rate=RATE), "progress": False},
        daemon=True,
    )
    thread.start()
    return thread


@dataclasses.dataclass
class Run:
    summary: ConsumerSummary
    metrics: StreamMetrics
    controller: CanaryController
    decisions: list[dict[str, Any]]
    events: list[dict[str, Any]]
    shadow: list[dict[str, Any]]

    def steps(self) -> list[str]:
        return [e["kind"] for e in self.events]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def consume_with_shadow(
    broker: Any,
    server: ServerProcess,
    models: Path,
    stream: tuple[Path, int],
    work: Path,
    policy: PromotionConfig,
    drift: bool = False,
    protocol: str = "rest",
) -> Run:
    """Publish the stream at ``RATE`` while one consumer (stable label, shadow scoring, auto
    rollout) decides it, scoring and shadow-scoring through ``protocol``; returns when the
    consumer has been idle for a few seconds."""
    path, n = stream
    bootstrap = broker.bootstrap_servers
    topics = make_topics(bootstrap)
    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=f"g-{topics.transactions}",
        topics=topics,
        state_dir=work / "state",
        batch_size=250,
        exit_when_idle_s=4.0,
        fsync_snapshots=False,
    )
    metrics = StreamMetrics()
    thresholds = ThresholdStore(models / MODEL_NAME)
    url = server.grpc_target if protocol == "grpc" else server.url
    client = build_model_client(url, MODEL_NAME, protocol=protocol, label=STABLE)
    shadow, controller = shadow_scoring(
        config,
        url,
        thresholds,
        metrics,
        policy,
        rollout(models, server),
        drift_triggered=lambda version: drift,
        max_queued=QUEUE,
        protocol=protocol,
    )
    scorer = Scorer(client, thresholds)
    consumer = StreamConsumer(config, scorer, metrics, shadow=shadow)
    controller.is_decider = consumer.rollout_decider.is_set
    done: list[ConsumerSummary] = []
    running = threading.Thread(target=lambda: done.append(consumer.run()), daemon=True)
    running.start()
    # The load starts once the consumer owns the partitions: a steady stream, not a backlog.
    wait_for(consumer.rollout_decider.is_set, timeout_s=120, what="the consumer's assignment")
    publish(path, bootstrap, topics).join(120)
    running.join(180)
    assert done, "the consumer did not finish"
    summary = done[0]
    decisions = read_topic(bootstrap, topics.decisions, expect=n)
    events = [e["value"] for e in read_topic(bootstrap, topics.drift_events)]
    shadow_records = [r["value"] for r in read_topic(bootstrap, topics.shadow_scores)]
    return Run(summary, metrics, controller, decisions, events, shadow_records)


def assert_no_failed_request(run: Run, n: int) -> None:
    """Every transaction decided once by the model (no fallback, no dead letter, no retry)."""
    assert run.summary.decided == n and run.summary.dead_lettered == 0
    assert len({d["value"][c.TRANSACTION_ID] for d in run.decisions}) == n
    assert not any(d["value"][DecisionFields.FALLBACK] for d in run.decisions)
    assert run.metric("fraud_stream_scoring_failures_total") == 0
    assert run.metric("fraud_stream_fallback_decisions_total") == 0


def served_versions(run: Run) -> list[int]:
    """The deciding version of each decision, in decision time order."""
    ordered = sorted(run.decisions, key=lambda d: d["value"][DecisionFields.DECIDED_AT])
    return [d["value"][DecisionFields.MODEL_VERSION] for d in ordered]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_decisions_follow_stable_and_shadow_scores_are_recorded(
    broker, server, models, stream, canary_of, tmp_path, protocol
) -> None:
    canary_of(OTHER)
    # A rule that never decides within the stream: only shadow scoring is looked at.
    patient = PromotionConfig(
        min_transactions=10**9, min_labelled_frauds=10**9, max_shadow_s=10.0**9
    )
    run = consume_with_shadow(broker, server, models, stream, tmp_path, patient, protocol=protocol)
    n = stream[1]
    assert_no_failed_request(run, n)
    assert set(served_versions(run)) == {1}, "the canary took live traffic"
    assert run.steps() == [SHADOW_STARTED]
    shadowed = run.metric("fraud_stream_shadow_transactions_total")
    skipped = run.metric("fraud_stream_shadow_batches_total", outcome="skipped")
    assert (
        shadowed > n / 2 and run.metric("fraud_stream_shadow_batches_total", outcome="error") == 0
    )
    assert sum(len(r[ShadowFields.TRANSACTION_IDS]) for r in run.shadow) == shadowed
    record = run.shadow[0]
    assert (record[ShadowFields.STABLE_VERSION], record[ShadowFields.CANARY_VERSION]) == (1, OTHER)
    by_id = {d["value"][c.TRANSACTION_ID]: d["value"] for d in run.decisions}
    ids, scores = record[ShadowFields.TRANSACTION_IDS], record[ShadowFields.STABLE_SCORES]
    for tid, score in zip(ids, scores, strict=True):
        assert by_id[tid][DecisionFields.SCORE] == pytest.approx(score)
    assert run.controller.policy is not None and run.controller.policy.verdict is None
    print(f"shadowed {shadowed:.0f} of {n}, {skipped:.0f} batches skipped")


def test_a_drift_triggered_canary_is_promoted_under_load(
    broker, server, models, stream, canary_of, tmp_path
) -> None:
    control = canary_of(OTHER)
    policy = PromotionConfig(drift_min_transactions=1500, max_alert_rate=1.0)
    triggered = m.now_iso()
    run = consume_with_shadow(broker, server, models, stream, tmp_path, policy, drift=True)
    assert_no_failed_request(run, stream[1])
    assert run.steps() == [SHADOW_STARTED, VERDICT, PROMOTED]
    # The demo's figures from these records, as if a retrain started before the consumer.
    history = [
        {"status": STARTED, "run_id": "r", "started_at": triggered},
        {"status": PUSHED, "run_id": "r", "version": OTHER},
    ]
    figures = demo_report.rollout_figures(history, run.shadow, run.events)
    assert 0 < figures["trigger_to_canary_s"] <= figures["trigger_to_promoted_s"], figures
    assert run.events[1]["action"] == PROMOTE and run.events[1]["drift_triggered"] is True
    versions = served_versions(run)
    # Stable 1 decided everything until the promotion, the promoted version everything after.
    assert versions == [1] * versions.count(1) + [OTHER] * versions.count(OTHER)
    assert versions.count(1) and versions.count(OTHER)
    state = {row.version: row.labels for row in control.list_versions() if row.labels}
    assert state == {OTHER: (STABLE,)}


def test_a_canary_that_errors_is_rolled_back(
    broker, server, models, stream, canary_of, tmp_path
) -> None:
    control = canary_of(FAILING)
    run = consume_with_shadow(broker, server, models, stream, tmp_path, PromotionConfig())
    assert_no_failed_request(run, stream[1])
    assert set(served_versions(run)) == {1}
    assert run.steps() == [SHADOW_STARTED, VERDICT, ROLLED_BACK]
    assert run.events[-1]["reason"] == "the canary failed 5 shadow batches in a row"
    assert run.metric("fraud_stream_shadow_batches_total", outcome="error") >= 5
    assert {row.version: row.labels for row in control.list_versions() if row.labels} == {
        1: (STABLE,)
    }


def test_a_worse_canary_is_not_promoted(
    broker, server, models, stream, canary_of, tmp_path
) -> None:
    canary_of(BLIND, stable=WARY)
    policy = PromotionConfig(**BY_LABELS)
    run = consume_with_shadow(broker, server, models, stream, tmp_path, policy)
    assert_no_failed_request(run, stream[1])
    assert set(served_versions(run)) == {WARY}
    assert run.steps() == [SHADOW_STARTED, VERDICT, ROLLED_BACK]
    verdict = run.events[1]
    assert verdict["action"] == ROLLBACK and verdict["reason"].startswith("worse on the same")
    figures = verdict["figures"]
    assert figures["canary_recall"] == 0 < figures["stable_recall"]


def test_an_equal_canary_is_promoted_on_the_paired_comparison(
    broker, server, models, stream, canary_of, tmp_path
) -> None:
    canary_of(COPY)
    policy = PromotionConfig(**BY_LABELS)
    run = consume_with_shadow(broker, server, models, stream, tmp_path, policy)
    assert_no_failed_request(run, stream[1])
    assert run.steps() == [SHADOW_STARTED, VERDICT, PROMOTED]
    assert run.events[1]["reason"].startswith("no worse on the same")
    assert set(served_versions(run)) <= {1, COPY}


def test_two_consumers_one_decider(broker, server, models, stream, canary_of, tmp_path) -> None:
    """Two `fraud stream consume` replicas share the partitions; only the owner of partition 0
    sends rollout events and promotes."""
    canary_of(COPY)
    path, n = stream
    bootstrap = broker.bootstrap_servers
    topics = make_topics(bootstrap)
    group = f"g-{topics.transactions}"
    procs = []
    logs = [tmp_path / f"consumer-{i}.log" for i in range(2)]
    for i in range(2):
        command = consumer_command(
            bootstrap,
            server.url,
            models / MODEL_NAME,
            tmp_path / f"state-{i}",
            group,
            "--exit-when-idle-seconds",
            "8",
            "--batch-size",
            "250",
            "--shadow-max-queued",
            str(QUEUE),
            *(
                arg
                for name, value in BY_LABELS.items()
                for arg in ("--rollout-set", f"{name}={value}")
            ),
        )
        with logs[i].open("w") as out:
            procs.append(
                subprocess.Popen(
                    command, env=child_env(topics), stdout=out, stderr=subprocess.STDOUT
                )
            )
    try:
        # Both replicas own partitions before the load starts.
        wait_for(
            lambda: all("assigned" in log.read_text() for log in logs),
            timeout_s=120,
            what="both consumers assigned",
        )
        publish(path, bootstrap, topics).join(120)
        for proc in procs:
            assert proc.wait(timeout=180) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    texts = [log.read_text() for log in logs]
    events = [e["value"] for e in read_topic(bootstrap, topics.drift_events)]
    rollout_events = [e for e in events if e.get("event") == EVENT]
    assert [e["kind"] for e in rollout_events] == [SHADOW_STARTED, VERDICT, PROMOTED], texts
    assert sum("not the decider" in text for text in texts) == 1, texts
    decisions = read_topic(bootstrap, topics.decisions, expect=n)
    assert len({d["value"][c.TRANSACTION_ID] for d in decisions}) == n
    assert {d["value"][DecisionFields.MODEL_VERSION] for d in decisions} <= {1, COPY}
    assert CANARY not in {
        label for row in rollout(models, server).list_versions() for label in row.labels
    }


def test_without_a_stable_label_the_highest_available_version_decides(
    broker, model_server, model_base, tmp_path
) -> None:
    """The embedded defaults (no model config file, no labels) still score."""
    from stream_fixtures import consume

    df = simulated(10, 3, seed=2)
    path = write_dataset(df, tmp_path / "raw.parquet")
    topics = make_topics(broker.bootstrap_servers)
    replay(path, broker.bootstrap_servers, topics, progress=False)
    summary = consume(
        broker.bootstrap_servers, topics, model_server, model_base, tmp_path / "s", label=STABLE
    )
    assert summary.decided == len(df)
