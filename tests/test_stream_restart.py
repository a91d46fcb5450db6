"""Restarts and failures: snapshots, SIGTERM, kill -9 during a replay, model server down.

Every test checks the two promises of the consumer: every transaction gets at least one
decision (at-least-once; duplicates only from the batch in flight at a crash), and the features
after any restart equal those of one uninterrupted streaming run.

``STREAM_KILL_TEST_TRANSACTIONS`` sets the size of the kill -9 test (default 20,000; the
100,000 run is documented in docs/streaming.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from stream_fixtures import (
    child_env,
    consume,
    consumer_command,
    make_topics,
    read_topic,
    reference_stream_features,
    simulated,
    start_model_server,
    start_serving,
    wait_for,
)

from core import contract as c
from streaming.broker import free_port
from streaming.messages import DecisionFields
from streaming.replay import Pacing, replay_frame

pytestmark = pytest.mark.slow
KILL_TEST_TRANSACTIONS = int(os.environ.get("STREAM_KILL_TEST_TRANSACTIONS", "20000"))
BATCH = 500


class DecisionWatcher:
    """Reads a decisions topic from the beginning in a background thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=50
        )
        parts = self._consumer.partitions_for_topic(topic) or set()
        self._consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self._consumer.seek_to_beginning()
        self.decisions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msgs in self._consumer.poll(timeout_ms=200, max_records=20_000).values():
                self.decisions.extend(orjson.loads(m.value) for m in msgs)

    def count(self) -> int:
        return len(self.decisions)

    def close(self) -> list[dict[str, Any]]:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
            self._consumer.close(autocommit=False)
        return self.decisions


class ConsumerProcess:
    """``python -m app.stream_cli stream consume`` as its own process."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.cmd, self.env, self.log_dir = cmd, env, log_dir
        self.runs = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.runs += 1
        log = open(self.log_dir / f"consumer-{self.runs}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=log)
        log.close()  # the child has its own descriptor

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def dump_stacks(self) -> None:
        """Ask a live consumer for its threads' stacks (they land in its log)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:]
            for p in sorted(self.log_dir.glob("consumer-*.log"))
        )


def _check_features(decisions: list[dict[str, Any]], df: pd.DataFrame) -> None:
    """Every decision (duplicates included) carries the uninterrupted run's features."""
    ref = reference_stream_features(df)
    got = pd.DataFrame(
        [d[DecisionFields.FEATURES] for d in decisions],
        index=[d[c.TRANSACTION_ID] for d in decisions],
    )[list(c.STATEFUL_FEATURES)]
    expected = ref.loc[got.index]
    mismatched = (got != expected).any(axis=1)
    assert not mismatched.any(), (
        f"{int(mismatched.sum())} decisions with features != uninterrupted run, e.g.\n"
        f"{got[mismatched].head(3)}\nexpected\n{expected[mismatched].head(3)}"
    )


class Scene:
    """One test's stream on the module's broker: fresh topics, a watcher of their decisions, and
    consumer processes sharing one state volume (as a group does on Kubernetes). Teardown kills
    the consumers still running and closes the watcher."""

    def __init__(self, bootstrap: str, model_base: Path, work: Path) -> None:
        self.bootstrap, self.model_base, self.work = bootstrap, model_base, work
        self.topics = make_topics(bootstrap)
        self.watcher = DecisionWatcher(bootstrap, self.topics.decisions)
        self.consumers: list[ConsumerProcess] = []

    def consumer(
        self, serving_url: str, group: str, idle_s: int, *extra: str, logs: str = ""
    ) -> ConsumerProcess:
        """A consumer process (not started yet) of ``group``, batches of ``BATCH``, exiting
        after ``idle_s`` without messages; its logs go to ``work / logs``."""
        cmd = consumer_command(
            self.bootstrap,
            serving_url,
            self.model_base,
            self.work / "state",
            group,
            "--batch-size",
            str(BATCH),
            "--exit-when-idle-seconds",
            str(idle_s),
            *extra,
        )
        log_dir = self.work / logs
        log_dir.mkdir(exist_ok=True)
        process = ConsumerProcess(cmd, child_env(self.topics), log_dir)
        self.consumers.append(process)
        return process

    def replay(self, df: pd.DataFrame, rate: float) -> threading.Thread:
        """Publish ``df`` at ``rate`` in a background thread; its errors land in ``.errors``."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                replay_frame(
                    df, self.bootstrap, self.topics, pacing=Pacing(rate=rate), progress=False
                )
            except BaseException as err:  # surfaced by the test through .errors
                errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.errors = errors  # type: ignore[attr-defined]
        thread.start()
        return thread

    def close(self) -> None:
        for process in self.consumers:
            process.kill_if_running()
        self.watcher.close()


@pytest.fixture
def scene(broker, model_base, tmp_path) -> Iterator[Scene]:
    scene = Scene(broker.bootstrap_servers, model_base, tmp_path)
    yield scene
    scene.close()


@pytest.fixture
def own_server(model_base, tmp_path) -> Iterator[Any]:
    """A model server of the test's own, which the test stops and starts again on its port."""
    server = start_model_server(model_base, tmp_path / "own-server")
    yield server
    server.stop()


def test_restart_from_snapshots_and_from_nothing(broker, model_server, model_base, tmp_path):
    """Graceful stops: the snapshot carries the state; without snapshots the consumer rebuilds
    the state from the topic (silently) up to the committed offsets."""
    df = simulated(150, 30, seed=21)
    topics = make_topics(broker.bootstrap_servers)
    replay_frame(df, broker.bootstrap_servers, topics, progress=False)
    state = tmp_path / "state"
    args = dict(group_id="restart", batch_size=700)
    third = len(df) // 3
    first = consume(broker.bootstrap_servers, topics, model_server, model_base, state,
                    max_messages=third, **args)  # fmt: skip
    assert first.decided == third
    assert list((state / "snapshots").glob("*.snapshot"))  # the partitions it touched
    second = consume(broker.bootstrap_servers, topics, model_server, model_base, state,
                     max_messages=third, **args)  # fmt: skip
    assert second.decided == third and second.replayed_for_state == 0
    shutil.rmtree(state / "snapshots")  # state lost: rebuilt from the retained history
    last = consume(broker.bootstrap_servers, topics, model_server, model_base, state, **args)
    assert last.decided == len(df) - 2 * third
    assert last.replayed_for_state == 2 * third
    decisions = [
        d["value"] for d in read_topic(broker.bootstrap_servers, topics.decisions, expect=len(df))
    ]
    ids = Counter(d[c.TRANSACTION_ID] for d in decisions)
    assert len(ids) == len(df) and max(ids.values()) == 1  # graceful: no duplicates
    _check_features(decisions, df)


def test_kill_9_three_times_during_a_replay(model_server, scene):
    n = KILL_TEST_TRANSACTIONS
    days = max(20, n // 700)
    df = simulated(max(100, n // (2 * days)), days, seed=33)
    df = df.head(n).reset_index(drop=True)
    watcher = scene.watcher
    # A killed member holds its partitions until its session expires: keep that short.
    consumer = scene.consumer(model_server.url, "kill9", 6, "--session-timeout-ms", "6000")
    consumer.start()
    # Paced so that the kills fall while the replay is still publishing (each rejoin waits for
    # the dead member's session to expire).
    replay = scene.replay(df, rate=max(500.0, n / 30))
    kills: list[int] = []
    # One graceful stop first: SIGTERM finishes the batch, commits, snapshots, exits 0.
    wait_for(lambda: watcher.count() >= n * 0.1, 120, "first decisions", poll_s=0.05)
    assert consumer.signal(signal.SIGTERM) == 0, consumer.logs()
    consumer.start()
    for share in (0.3, 0.5, 0.7):
        if not wait_for(lambda s=share: watcher.count() >= n * s, 180, "", 0.05, quiet=True):
            consumer.dump_stacks()
            raise AssertionError(
                f"{watcher.count()} decisions, waiting for {share:.0%} of {n}; consumer "
                f"logs:\n{consumer.logs()}"
            )
        kills.append(watcher.count())
        consumer.signal(signal.SIGKILL)
        consumer.start()
    replay.join(timeout=600)
    assert not replay.errors, replay.errors  # type: ignore[attr-defined]
    assert consumer.wait(timeout_s=300) == 0, consumer.logs()
    wait_for(lambda: watcher.count() >= n, 60, "all decisions", quiet=True)
    time.sleep(1)
    decisions = watcher.close()
    ids = Counter(d[c.TRANSACTION_ID] for d in decisions)
    missing = set(df[c.TRANSACTION_ID]) - set(ids)
    assert not missing, (
        f"{len(missing)} transactions without a decision, e.g. {sorted(missing)[:5]}; "
        f"consumer logs:\n{consumer.logs()}"
    )
    duplicates = sum(ids.values()) - len(ids)
    assert duplicates <= 3 * BATCH, f"{duplicates} duplicate decisions for 3 kills"
    _check_features(decisions, df)
    print(f"kill -9 at {kills} decisions of {len(df)}: {duplicates} duplicates")


def test_a_second_consumer_joins_mid_stream_then_leaves(model_server, scene):
    """Scale out and back in during a replay: the partitions' state moves with them through
    the shared snapshots and committed offsets. Every transaction is decided, each rebalance
    re-decides at most the batch in flight, and every decision carries the features of one
    uninterrupted run (the batch engine's)."""
    df = simulated(120, 20, seed=46)
    watcher = scene.watcher

    def member(name: str) -> ConsumerProcess:
        return scene.consumer(
            model_server.url, "scale", 8, "--session-timeout-ms", "6000", logs=name
        )

    first, second = member("first"), member("second")
    first.start()
    replay = scene.replay(df, rate=len(df) / 40)
    wait_for(lambda: watcher.count() >= len(df) * 0.15, 120, "first decisions", poll_s=0.05)
    second.start()
    wait_for(lambda: watcher.count() >= len(df) * 0.5, 180, "decisions by two members")
    assert second.signal(signal.SIGTERM) == 0, second.logs()
    replay.join(timeout=300)
    assert not replay.errors, replay.errors  # type: ignore[attr-defined]
    assert first.wait(timeout_s=300) == 0, first.logs()
    wait_for(lambda: watcher.count() >= len(df), 60, "all decisions", quiet=True)
    decisions = watcher.close()
    ids = Counter(d[c.TRANSACTION_ID] for d in decisions)
    assert set(ids) == set(df[c.TRANSACTION_ID]), first.logs() + second.logs()
    second_log = (second.log_dir / "consumer-1.log").read_text()
    # It did take partitions over (and handed them back when stopped).
    assert re.search(rf"assigned .*{re.escape(scene.topics.transactions)}\[\d\]", second_log), (
        second_log[-2000:]
    )
    duplicates = sum(ids.values()) - len(ids)
    assert duplicates <= 2 * BATCH, f"{duplicates} duplicate decisions over two rebalances"
    _check_features(decisions, df)
    print(f"two members: {duplicates} duplicate decisions of {len(df)}")


def test_model_server_down_for_10_seconds(own_server, scene):
    """The server dies mid-stream and comes back on the same port 10 s later: the consumer
    holds its batch (no crash, nothing committed or dropped) and resumes by itself."""
    server = own_server
    df = simulated(100, 20, seed=44)
    watcher = scene.watcher
    metrics_port = free_port()
    consumer = scene.consumer(
        server.url,
        "down",
        8,
        "--metrics-port",
        str(metrics_port),
        "--metrics-host",
        "127.0.0.1",
        "--lag-bound-seconds",
        "5",
        "--decision-deadline-seconds",
        "off",
    )
    consumer.start()
    replay = scene.replay(df, rate=len(df) / 40)
    wait_for(lambda: watcher.count() >= len(df) * 0.2, 120, "first decisions", poll_s=0.05)
    assert _probe(metrics_port, "/ready") == 200
    server.stop()
    down_at = watcher.count()
    time.sleep(10)
    assert consumer.proc is not None and consumer.proc.poll() is None, consumer.logs()
    held = _metric(metrics_port, "fraud_stream_scoring_held_seconds")
    failures = _metric(metrics_port, "fraud_stream_scoring_failures_total")
    assert failures > 0 and held > 3, (held, failures)
    assert _metric(metrics_port, "fraud_stream_hold_bound_exceeded_total") == 1
    # Held past the lag bound: not ready (with the reason), still alive.
    assert _probe(metrics_port, "/ready") == 503
    assert _probe(metrics_port, "/healthz") == 200
    assert watcher.count() <= down_at + BATCH  # nothing decided while the server was down
    start_serving(server)
    wait_for(lambda: _probe(metrics_port, "/ready") == 200, 60, "ready again")
    replay.join(timeout=300)
    assert consumer.wait(timeout_s=300) == 0, consumer.logs()
    wait_for(lambda: watcher.count() >= len(df), 60, "all decisions")
    decisions = watcher.close()
    ids = Counter(d[c.TRANSACTION_ID] for d in decisions)
    assert set(ids) == set(df[c.TRANSACTION_ID])
    assert max(ids.values()) == 1  # held, not crashed: nothing decided twice
    _check_features(decisions, df)


def test_decision_deadline_falls_back_then_corrects(own_server, scene):
    """With the model server down, each transaction gets the fallback decision once its
    deadline passes (marked, counted); when the server is back every one of them is re-scored
    and the score goes out as a correction. Nothing is decided twice otherwise, and every
    score carries the uninterrupted run's features."""
    server = own_server
    df = simulated(60, 20, seed=45)
    watcher = scene.watcher
    metrics_port = free_port()
    consumer = scene.consumer(
        server.url,
        "deadline",
        8,
        "--metrics-port",
        str(metrics_port),
        "--decision-deadline-seconds",
        "1",
        "--fallback-decision",
        c.REVIEW,
    )
    consumer.start()
    replay = scene.replay(df, rate=len(df) / 30)
    wait_for(lambda: watcher.count() >= len(df) * 0.2, 120, "first decisions", poll_s=0.05)
    server.stop()
    fallbacks = lambda: sum(d[DecisionFields.FALLBACK] for d in list(watcher.decisions))  # noqa: E731
    wait_for(lambda: fallbacks() >= 100, 60, "fallback decisions while the server is down")
    assert _metric(metrics_port, "fraud_stream_fallback_decisions_total") >= 100
    assert _metric(metrics_port, "fraud_stream_fallback_backlog") >= 100
    start_serving(server)
    replay.join(timeout=300)
    assert consumer.wait(timeout_s=300) == 0, consumer.logs()
    decisions = watcher.close()
    first = [d for d in decisions if not d[DecisionFields.CORRECTION]]
    fallback = [d for d in first if d[DecisionFields.FALLBACK]]
    corrections = [d for d in decisions if d[DecisionFields.CORRECTION]]
    assert Counter(d[c.TRANSACTION_ID] for d in first) == Counter(set(df[c.TRANSACTION_ID]))
    assert len(fallback) >= 100
    assert all(
        d[DecisionFields.DECISION] == c.REVIEW and d[DecisionFields.SCORE] is None for d in fallback
    )
    assert Counter(d[c.TRANSACTION_ID] for d in corrections) == Counter(
        d[c.TRANSACTION_ID] for d in fallback
    )
    assert all(d[DecisionFields.SCORE] is not None for d in corrections)
    _check_features([d for d in decisions if d[DecisionFields.SCORE] is not None], df)


def _probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")
